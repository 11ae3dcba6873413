/**
 * The container lifecycle over the native core: create, start, kill, stop,
 * wait, delete, list, stats and logs. Everything about a container lives in
 * its directory, so a new process (the CLI, a restarted agent) finds running
 * containers again; processes are named by (pid, start time), so a reused
 * pid is never mistaken for the container.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { type ContainerSpec, type ContainerSpecInput, type ContainerState, containerSpec, type ExitRecord } from "../../schemas/container.js";
import { formatIssues } from "../../schemas/format-issues.js";
import { FleetError, isErrno } from "../errors.js";
import { capabilitySet } from "./capabilities.js";
import { Cgroups } from "./cgroup.js";
import { detectCgroupLayout } from "./cgroup-layout.js";
import type { CgroupStats } from "./cgroup-limits.js";
import { type ContainerPaths, containerPaths, readExit, readState, writeFileAtomic, writeState } from "./container-dir.js";
import { readLog } from "./log-tail.js";
import { loadNative, type NativeBinding } from "./native.js";
import { DEFAULT_PATH } from "./proc-defaults.js";
import { encodeShimConfig } from "./shim-config.js";
import { signalNumber } from "./signals.js";

export type ContainerStatus = "created" | "running" | "exited";

export interface ContainerInfo {
  id: string;
  status: ContainerStatus;
  createdAt: string;
  startedAt?: string | undefined;
  pid?: number | undefined;
  exit?: ExitRecord | undefined;
  spec: ContainerSpec;
}

export interface RuntimeOptions {
  /** The state directory (default /var/lib/fleetlet). */
  root: string;
  native?: NativeBinding;
  cgroups?: Cgroups;
  cgroupParent?: string;
}

export class Runtime {
  readonly root: string;
  readonly cgroups: Cgroups;
  private readonly native: NativeBinding;
  private readonly removals = new Set<Promise<void>>();
  private readonly removalErrors: FleetError[] = [];

  constructor(opts: RuntimeOptions) {
    this.root = opts.root;
    this.native = opts.native ?? loadNative();
    this.cgroups = opts.cgroups ?? new Cgroups(detectCgroupLayout(), opts.cgroupParent);
  }

  private paths(id: string): ContainerPaths {
    return containerPaths(this.root, id);
  }

  volumeDir(name: string): string {
    return join(this.root, "volumes", name);
  }

  create(input: ContainerSpecInput): ContainerInfo {
    const parsed = containerSpec.safeParse(input);
    if (!parsed.success) throw new FleetError("E_INVALID_ARGUMENT", formatIssues(parsed.error), { exitCode: 125 });
    const spec = parsed.data;
    for (const layer of spec.layers) {
      if (!existsSync(layer) || !statSync(layer).isDirectory()) {
        throw new FleetError("E_NOT_FOUND", `rootfs ${layer}: no such directory`, { exitCode: 125 });
      }
    }
    capabilitySet(spec.capAdd, spec.capDrop); // refuses unknown names now, not at start
    const id = spec.name ?? randomBytes(6).toString("hex");
    const paths = this.paths(id);
    mkdirSync(join(this.root, "containers"), { recursive: true, mode: 0o711 });
    try {
      mkdirSync(paths.dir, { mode: 0o711 });
    } catch (err) {
      if (isErrno(err, "EEXIST")) throw new FleetError("E_CONFLICT", `a container named ${id} already exists`, { exitCode: 125 });
      throw err;
    }
    for (const d of [paths.upper, paths.work, paths.rootfs]) mkdirSync(d);
    const state: ContainerState = { id, createdAt: new Date().toISOString(), spec, cgroups: [] };
    writeState(paths, state);
    return this.describe(state, paths);
  }

  async start(id: string, opts: { foreground?: boolean } = {}): Promise<ContainerInfo> {
    const paths = this.paths(id);
    const state = readState(paths, id);
    if (state.shim) throw new FleetError("E_CONFLICT", `container ${id} has already been started`, { exitCode: 125 });
    const { spec } = state;
    rmSync(paths.exit, { force: true });
    for (const v of spec.volumes) mkdirSync(this.volumeDir(v.name), { recursive: true });
    const groups = this.cgroups.plan(id, spec.resources);
    const hostname = spec.hostname ?? id.slice(0, 63);
    const env = withDefaults(spec, hostname);
    writeFileAtomic(
      paths.config,
      encodeShimConfig({ id, spec, env, hostname, paths, cgroups: groups, capabilities: capabilitySet(spec.capAdd, spec.capDrop), volumeDir: (n) => this.volumeDir(n) }),
    );
    let started: Awaited<ReturnType<NativeBinding["core"]["spawnShim"]>>;
    try {
      started = await this.native.core.spawnShim(this.native.shimPath, paths.config, opts.foreground ?? false);
    } catch (err) {
      await this.cgroups.remove(id);
      throw startError(id, err);
    }
    state.cgroups = [...new Set(groups.dirs.values())];
    state.shim = { pid: started.shimPid, startTime: String(started.shimStartTime) };
    state.init = { pid: started.initPid, startTime: String(started.initStartTime) };
    state.startedAt = new Date().toISOString();
    writeState(paths, state);
    return this.describe(state, paths);
  }

  /** Sends a signal to the container's init; false when it has already exited. */
  kill(id: string, signal: string | number = "SIGKILL"): boolean {
    const state = readState(this.paths(id), id);
    if (!state.init) throw new FleetError("E_CONFLICT", `container ${id} is not running`);
    return this.native.core.signalProcess(state.init.pid, BigInt(state.init.startTime), signalNumber(signal));
  }

  /** Resolves with the exit record once the container has exited. Never polls. */
  wait(id: string, signal?: AbortSignal): Promise<ExitRecord> {
    const paths = this.paths(id);
    const state = readState(paths, id);
    const done = readExit(paths);
    if (done) return Promise.resolve(done);
    if (!state.shim) return Promise.reject(new FleetError("E_CONFLICT", `container ${id} has not been started`));
    const shim = state.shim;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        watch.close();
        reject(signal?.reason ?? new Error("aborted"));
      };
      const watch = new this.native.core.ExitWatch(shim.pid, BigInt(shim.startTime), () => {
        signal?.removeEventListener("abort", onAbort);
        const exit = readExit(paths);
        if (exit) resolve(exit);
        else reject(new FleetError("E_RUNTIME", `container ${id}: its shim (pid ${shim.pid}) died without recording the exit`));
      });
      if (signal?.aborted) onAbort();
      else signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** The stop signal, then SIGKILL once the timeout has passed. */
  async stop(id: string, opts: { timeoutMs?: number; signal?: string } = {}): Promise<ExitRecord> {
    const state = readState(this.paths(id), id);
    const done = readExit(this.paths(id));
    if (done || !state.init) {
      if (done) return done;
      throw new FleetError("E_CONFLICT", `container ${id} is not running`);
    }
    const abort = new AbortController();
    const exited = this.wait(id, abort.signal);
    this.kill(id, opts.signal ?? state.spec.stopSignal);
    const timeout = opts.timeoutMs ?? state.spec.stopTimeoutMs;
    const timer = setTimeout(() => this.kill(id, "SIGKILL"), timeout);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Removes the container: its cgroups, writable layer, logs and state. */
  async delete(id: string, opts: { force?: boolean } = {}): Promise<void> {
    const paths = this.paths(id);
    const info = this.inspect(id);
    if (info.status === "running") {
      if (!opts.force) throw new FleetError("E_CONTAINER_RUNNING", `container ${id} is running: stop it first or force the removal`);
      this.kill(id, "SIGKILL");
      await this.wait(id);
    }
    await this.cgroups.remove(id);
    // One rename takes the container out of sight at once; its writable layer
    // is then erased in the background (see settled()).
    const retired = join(this.root, "containers", `.removed-${id}-${randomBytes(4).toString("hex")}`);
    renameSync(paths.dir, retired);
    this.eraseInBackground(retired);
  }

  private eraseInBackground(dir: string): void {
    const erase: Promise<void> = this.native.core
      .removeTree(dir)
      .catch((err: Error) => {
        this.removalErrors.push(new FleetError("E_RUNTIME", `erase removed container files ${dir}: ${err.message}`, { cause: err }));
      })
      .finally(() => this.removals.delete(erase));
    this.removals.add(erase);
  }

  /** Resolves once removed containers' files are erased; rejects if that failed. */
  async settled(): Promise<void> {
    while (this.removals.size > 0) await Promise.all(this.removals);
    const failed = this.removalErrors.splice(0);
    if (failed.length > 0) throw failed[0];
  }

  /** Erases what a removal interrupted by a crash left behind. */
  sweep(): void {
    for (const name of this.containerDirNames(true)) {
      if (name.startsWith(".removed-")) this.eraseInBackground(join(this.root, "containers", name));
    }
  }

  private containerDirNames(includeRetired = false): string[] {
    try {
      return readdirSync(join(this.root, "containers")).filter((n) => includeRetired || !n.startsWith("."));
    } catch (err) {
      if (isErrno(err, "ENOENT")) return [];
      throw err;
    }
  }

  inspect(id: string): ContainerInfo {
    const paths = this.paths(id);
    return this.describe(readState(paths, id), paths);
  }

  list(): ContainerInfo[] {
    const out: ContainerInfo[] = [];
    for (const id of this.containerDirNames().sort()) {
      const paths = this.paths(id);
      if (!existsSync(paths.state)) continue; // a create that was interrupted before its state was written
      out.push(this.describe(readState(paths, id), paths));
    }
    return out;
  }

  stats(id: string): CgroupStats {
    readState(this.paths(id), id);
    return this.cgroups.stats(id);
  }

  logs(id: string, opts: { tail?: number } = {}): string {
    const paths = this.paths(id);
    const state = readState(paths, id);
    return readLog(paths.log, state.spec.log.keep, opts.tail);
  }

  private describe(state: ContainerState, paths: ContainerPaths): ContainerInfo {
    const exit = readExit(paths);
    let status: ContainerStatus = "created";
    if (exit) status = "exited";
    else if (state.shim) {
      const alive = this.native.core.startTime(state.shim.pid) === BigInt(state.shim.startTime);
      status = alive ? "running" : "exited";
    }
    return { id: state.id, status, createdAt: state.createdAt, startedAt: state.startedAt, pid: state.init?.pid, exit, spec: state.spec };
  }
}

function withDefaults(spec: ContainerSpec, hostname: string): string[] {
  const env = [...spec.env];
  const has = (k: string) => env.some((e) => e.startsWith(`${k}=`));
  if (!has("PATH")) env.unshift(`PATH=${DEFAULT_PATH}`);
  if (!has("HOSTNAME")) env.push(`HOSTNAME=${hostname}`);
  if (!has("HOME")) env.push(`HOME=${spec.user.uid === 0 ? "/root" : "/"}`);
  return env;
}

function startError(id: string, err: unknown): FleetError {
  const e = err as Error & { exitCode?: number };
  const exitCode = e.exitCode ?? 125;
  const code = exitCode === 127 ? "E_COMMAND_NOT_FOUND" : exitCode === 126 ? "E_NOT_EXECUTABLE" : "E_RUNTIME";
  return new FleetError(code, `container ${id}: ${e.message}`, { exitCode, cause: err });
}
