/**
 * The native isolation core: the addon (a few coarse operations) and the
 * path of the per-container shim, both built by node-gyp into
 * native/build/Release at `npm ci`; a release bundle has them in native/.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { FleetError } from "../errors.js";

export interface SpawnResult {
  shimPid: number;
  shimStartTime: bigint;
  initPid: number;
  initStartTime: bigint;
}

export interface ExitWatchHandle {
  close(): void;
}

/** A blob being written: writes and SHA-256 on a worker thread, one operation at a time (blob-writer.cc). */
export interface NativeBlobWriter {
  /**
   * pwritev(2) of the buffers at `position`, whole, then their bytes added to
   * the hash. The array is held, not copied, until the promise settles: it
   * must not change meanwhile, or a buffer taken out of it could be collected
   * under the worker thread.
   */
  write(buffers: readonly Buffer[], position: number): Promise<void>;
  /** Hashes the first `length` bytes of the file (a partial being resumed). */
  hashFile(length: number): Promise<void>;
  /** The hex sha256 of everything hashed; the hash starts over. */
  digest(): string;
  reset(): void;
}

/** The CAs one registry client trusts, and the TLS sessions it may resume (tls-trust.cc). */
export type NativeTlsContext = object;

/** What one receive of a body wrote: `bytes` are on disk and hashed even when `error` is set. */
export interface NativeReceive {
  bytes: number;
  /** The body is over. */
  end: boolean;
  /** Set when the receive stopped early; `disk` when writing the file failed, not the connection. */
  error?: Error & { code?: string; errno?: number; disk?: boolean };
}

/** One HTTP/1.1 connection whose bodies go from the socket to a blob's file and hash on a worker thread (http-connection.cc). */
export interface NativeHttpConnection {
  /** Connects if it is not, sends the request head and resolves with the answer's head. */
  exchange(requestHead: string): Promise<string>;
  /** Up to `want` body bytes into the writer's file at `position`, hashed, and copied into `copy` when given. */
  receive(writer: NativeBlobWriter, position: number, want: number, copy?: Buffer): Promise<NativeReceive>;
  /** True when the last answer was read whole and the server keeps the connection. */
  reusable(): boolean;
  /** Ends the connection; an operation under way fails at once. */
  close(): void;
}

export interface NativeCore {
  /** Starts a detached shim with this config (see shim-config.ts); resolves once the command is exec'd. */
  spawnShim(shimPath: string, config: Buffer, foreground: boolean): Promise<SpawnResult>;
  /** Start time of a process (clock ticks since boot), null when it is gone. */
  startTime(pid: number): bigint | null;
  /** Signals the process that started at startTime; false when it is gone. */
  signalProcess(pid: number, startTime: bigint, signal: number): boolean;
  /** Erases a tree on a worker thread; never follows symlinks or crosses mounts. */
  removeTree(path: string): Promise<void>;
  /** mknod(2) on the path itself; mode carries the file type bits. */
  mknod(path: string, mode: number, major: number, minor: number): void;
  /** lsetxattr(2): never follows a final symlink. */
  setXattr(path: string, name: string, value: Buffer): void;
  getXattr(path: string, name: string): Buffer | null;
  /** flock(2) with LOCK_NB: true when taken, false when another descriptor holds it; close the fd to release. */
  tryLock(fd: number, exclusive: boolean): boolean;
  /** Sends `state` to systemd's NOTIFY_SOCKET; false when there is none. */
  sdNotify(state: string): boolean;
  /** V8's low-memory collection, then malloc_trim(0): the heap shrunk to what lives, free pages back to the kernel. */
  reclaimMemory(): boolean;
  /** execve(2), the standard streams kept open; returns only by throwing. */
  execve(path: string, argv: string[], env: string[]): never;
  ExitWatch: new (pid: number, startTime: bigint, onExit: () => void) => ExitWatchHandle;
  /** Over an open fd, which the caller keeps open until the last operation settled. */
  BlobWriter: new (
    fd: number,
  ) => NativeBlobWriter;
  /** From a PEM bundle; throws when it holds no certificate. */
  TlsContext: new (
    caPem: string,
  ) => NativeTlsContext;
  /**
   * To the first of `addresses` (IPs, space-separated) that answers; `servername` "" is plain HTTP,
   * else the name the server's certificate must carry.
   */
  HttpConnection: new (
    addresses: string,
    port: number,
    servername: string,
    tls: NativeTlsContext | null,
    connectMs: number,
    idleMs: number,
  ) => NativeHttpConnection;
}

export interface NativeBinding {
  core: NativeCore;
  shimPath: string;
}

function findBuildDir(): string {
  const fromEnv = process.env.FLEETLET_NATIVE_DIR;
  if (fromEnv) return fromEnv;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    for (const candidate of [join(dir, "native", "build", "Release"), join(dir, "native")]) {
      if (existsSync(join(candidate, "fleetlet_native.node"))) return candidate;
    }
    dir = dirname(dir);
  }
  throw new FleetError(
    "E_RUNTIME",
    "the native core is not built (native/build/Release is missing): run `npm ci` or `npm run build`",
    {
      exitCode: 125,
    },
  );
}

let loaded: NativeBinding | undefined;

/** Loads the addon once per process. */
export function loadNative(): NativeBinding {
  if (!loaded) {
    const dir = findBuildDir();
    const require = createRequire(import.meta.url);
    loaded = { core: require(join(dir, "fleetlet_native.node")) as NativeCore, shimPath: join(dir, "fleetlet-shim") };
  }
  return loaded;
}
