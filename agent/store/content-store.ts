/**
 * Blobs by digest, and the partial downloads ("ingests") that become them.
 * This is the one place that decides whether a blob is complete and
 * verified: `Ingest.commit()` checks the size and the sha256 of every byte,
 * fsyncs, and renames into `blobs/sha256/<hex>`. Nothing else writes there,
 * so a blob that exists is a verified blob. A power cut leaves either that
 * or a partial in `ingest/` that the next pull resumes.
 */
import { createHash, type Hash, randomBytes } from "node:crypto";
import {
  createReadStream,
  existsSync,
  linkSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { FleetError, isErrno } from "../errors.js";
import type { NativeCore } from "../system/native.js";
import { digestHex } from "./digest.js";

export class ContentStore {
  readonly blobsDir: string;
  readonly ingestDir: string;

  /** `startTime`: the native core's, which names a process for good together with its pid (the ingest locks' holders). */
  constructor(
    root: string,
    private readonly native: Pick<NativeCore, "startTime">,
  ) {
    this.blobsDir = join(root, "blobs", "sha256");
    this.ingestDir = join(root, "ingest");
    mkdirSync(this.blobsDir, { recursive: true });
    mkdirSync(this.ingestDir, { recursive: true });
  }

  blobPath(digest: string): string {
    return join(this.blobsDir, digestHex(digest));
  }

  has(digest: string): boolean {
    return existsSync(this.blobPath(digest));
  }

  size(digest: string): number {
    return statSync(this.blobPath(digest)).size;
  }

  createReadStream(digest: string, opts: { highWaterMark?: number } = {}): Readable {
    return createReadStream(this.blobPath(digest), { highWaterMark: opts.highWaterMark ?? 1 << 20 });
  }

  /** Stores a small blob held in memory (a manifest, a config), verified first. */
  async put(digest: string, data: Buffer): Promise<void> {
    if (this.has(digest)) return;
    // Another process may be storing the same manifest or config right now: one writer at a time.
    const release = await this.lockIngest(digest);
    try {
      if (this.has(digest)) return;
      const ingest = await this.openIngest(digest, data.length, { restart: true });
      try {
        await ingest.write(data);
        await ingest.commit();
      } finally {
        await ingest.close();
      }
    } finally {
      release();
    }
  }

  /** Bytes of `digest` already downloaded and kept for resuming. */
  partialSize(digest: string): number {
    try {
      return statSync(this.partialPath(digest)).size;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return 0;
      throw err;
    }
  }

  partialPath(digest: string): string {
    return join(this.ingestDir, `${digestHex(digest)}.partial`);
  }

  /**
   * Takes the partial of `digest` for this process: one writer at a time,
   * across processes (the agent and a `fleetlet pull` may want the same
   * layer). The lock file names its holder by pid and start time, so a lock
   * left by a killed process is taken over, never waited on forever.
   * Resolves with the release function.
   */
  async lockIngest(digest: string, signal?: AbortSignal): Promise<() => void> {
    for (;;) {
      const release = this.tryLockIngest(digest);
      if (release) return release;
      await sleep(LOCK_POLL_MS, undefined, signal ? { signal } : {});
    }
  }

  /** The lock of `digest`'s partial if no live process holds it, else undefined. */
  tryLockIngest(digest: string): (() => void) | undefined {
    const path = join(this.ingestDir, `${digestHex(digest)}.lock`);
    const me = `${process.pid} ${this.native.startTime(process.pid)}`;
    const unique = () => `${path}.${process.pid}.${randomBytes(4).toString("hex")}`;
    for (;;) {
      // Written whole under a private name, then linked into place: a reader never sees a half-written lock.
      const mine = unique();
      writeFileSync(mine, me);
      try {
        linkSync(mine, path);
        return () => {
          try {
            if (readFileSync(path, "utf8") === me) unlinkSync(path);
          } catch (err) {
            if (!isErrno(err, "ENOENT")) throw err;
          }
        };
      } catch (err) {
        if (!isErrno(err, "EEXIST")) throw err;
      } finally {
        unlinkSync(mine);
      }
      let holder = "";
      try {
        holder = readFileSync(path, "utf8");
      } catch (err) {
        if (isErrno(err, "ENOENT")) continue; // released meanwhile
        throw err;
      }
      const [pid, start] = holder.split(" ");
      if (pid && String(this.native.startTime(Number(pid)) ?? "") === start) return undefined;
      // Its holder is gone: move the lock aside, and keep it out only if it is still the dead one's.
      const aside = unique();
      try {
        renameSync(path, aside);
      } catch (err) {
        if (isErrno(err, "ENOENT")) continue;
        throw err;
      }
      if (readFileSync(aside, "utf8") !== holder) {
        // A live process took it between our read and the rename: put it back unless another lock is already there.
        try {
          linkSync(aside, path);
        } catch (err) {
          if (!isErrno(err, "EEXIST")) throw err;
        }
      }
      unlinkSync(aside);
    }
  }

  /**
   * Opens the partial download of `digest`, re-hashing what is already on
   * disk so that the download resumes where it stopped.
   */
  async openIngest(digest: string, expectedSize: number, opts: { restart?: boolean } = {}): Promise<Ingest> {
    const path = this.partialPath(digest);
    const fh = await open(path, opts.restart ? "w" : "a+");
    const hash = createHash("sha256");
    let offset = 0;
    if (!opts.restart) {
      const { size } = await fh.stat();
      if (size > expectedSize) {
        await fh.truncate(0); // longer than the blob can be: nothing in it is trustworthy
      } else {
        const buf = Buffer.allocUnsafe(1 << 20);
        while (offset < size) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - offset), offset);
          if (bytesRead === 0) break;
          hash.update(buf.subarray(0, bytesRead));
          offset += bytesRead;
        }
      }
    }
    return new Ingest({ store: this, digest, expectedSize, path, fh, hash, offset });
  }

  delete(digest: string): void {
    try {
      unlinkSync(this.blobPath(digest));
    } catch (err) {
      if (!isErrno(err, "ENOENT")) throw err;
    }
  }

  list(): string[] {
    return readdirSync(this.blobsDir)
      .filter((n) => /^[a-f0-9]{64}$/.test(n))
      .map((n) => `sha256:${n}`);
  }

  /** Partial downloads as [digest, path]. */
  partials(): [string, string][] {
    return readdirSync(this.ingestDir)
      .filter((n) => /^[a-f0-9]{64}\.partial$/.test(n))
      .map((n) => [`sha256:${n.slice(0, 64)}`, join(this.ingestDir, n)]);
  }

  /** Called by Ingest.commit once the bytes are verified. */
  async adopt(path: string, digest: string): Promise<void> {
    renameSync(path, this.blobPath(digest));
    const dir = await open(this.blobsDir, "r");
    try {
      await dir.sync(); // the rename itself survives a power cut
    } finally {
      await dir.close();
    }
  }
}

/** The chunks after the first `skip` bytes, for a short writev. */
function remainder(chunks: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) {
    if (skip >= c.length) skip -= c.length;
    else {
      out.push(skip ? c.subarray(skip) : c);
      skip = 0;
    }
  }
  return out;
}

interface IngestInit {
  store: ContentStore;
  digest: string;
  expectedSize: number;
  path: string;
  fh: FileHandle;
  hash: Hash;
  offset: number;
}

const LOCK_POLL_MS = 100;

/** One partial blob being written. */
export class Ingest {
  readonly digest: string;
  readonly expectedSize: number;
  private readonly store: ContentStore;
  private readonly path: string;
  private readonly fh: FileHandle;
  private hash: Hash;
  private written: number;
  private closed = false;

  constructor(init: IngestInit) {
    this.store = init.store;
    this.digest = init.digest;
    this.expectedSize = init.expectedSize;
    this.path = init.path;
    this.fh = init.fh;
    this.hash = init.hash;
    this.written = init.offset;
  }

  /** Bytes on disk and hashed so far: where a download resumes. */
  get offset(): number {
    return this.written;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.written + chunk.length > this.expectedSize) {
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: more than the ${this.expectedSize} bytes the manifest declares`,
      );
    }
    this.hash.update(chunk);
    let done = 0;
    while (done < chunk.length) {
      const { bytesWritten } = await this.fh.write(chunk, done, chunk.length - done, this.written + done);
      done += bytesWritten;
    }
    this.written += chunk.length;
  }

  /** Appends several chunks with one write call, without copying them together. */
  async writeMany(chunks: Buffer[], total: number): Promise<void> {
    if (this.written + total > this.expectedSize) {
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: more than the ${this.expectedSize} bytes the manifest declares`,
      );
    }
    for (const c of chunks) this.hash.update(c);
    let done = 0;
    while (done < total) {
      const { bytesWritten } = await this.fh.writev(done === 0 ? chunks : remainder(chunks, done), this.written + done);
      done += bytesWritten;
    }
    this.written += total;
  }

  /** Drops what was written, for a server that ignored the range and resent from the start. */
  async restart(): Promise<void> {
    await this.fh.truncate(0);
    this.hash = createHash("sha256");
    this.written = 0;
  }

  /** Verifies size and digest, then moves the blob into the store; a mismatch deletes the partial. */
  async commit(): Promise<void> {
    if (this.written !== this.expectedSize) {
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: got ${this.written} bytes, the manifest declares ${this.expectedSize}`,
      );
    }
    const actual = `sha256:${this.hash.digest("hex")}`;
    if (actual !== this.digest) {
      await this.close();
      unlinkSync(this.path);
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: its content hashes to ${actual}; the download was discarded`,
      );
    }
    await this.fh.sync();
    await this.close();
    await this.store.adopt(this.path, this.digest);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}
