/**
 * The container lifecycle over the native core: create, start, kill, stop,
 * wait, exec, delete and following host devices; inspect, list, stats and
 * logs read what the catalog (container-catalog.ts) finds on disk. Everything about a container
 * lives in its directory, so a new process (the CLI, a restarted agent)
 * finds running containers again; processes are named by (pid, start time),
 * so a reused pid is never mistaken for the container.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import {
  type ContainerInfo,
  type ContainerSpecInput,
  type ContainerState,
  type ContainerStats,
  containerSpec,
  type ExitRecord,
} from "../../schemas/container.js";
import type { DevicePresence } from "../../schemas/device.js";
import { formatIssues } from "../../schemas/format-issues.js";
import { FleetError, isErrno } from "../errors.js";
import { loadNative, type NativeBinding, type SpawnResult } from "../system/native.js";
import { PRIVATE_MODE, privateDir, secureStateRoot, type Warn } from "../system/state-root.js";
import { BackgroundEraser } from "./background-eraser.js";
import { capabilitySet } from "./capabilities.js";
import { Cgroups, cgroupParentFor } from "./cgroup.js";
import { detectCgroupLayout } from "./cgroup-layout.js";
import { ContainerCatalog } from "./container-catalog.js";
import { ContainerDevices } from "./container-devices.js";
import { type ContainerPaths, prepareOverlayDirs, readExit, readRunning, writeState } from "./container-dir.js";
import { type ExecResult, execInContainer } from "./container-exec.js";
import { ContainerNetwork } from "./container-network.js";
import { deviceRule } from "./device-rules.js";
import { readLog } from "./log-tail.js";
import { withDefaults } from "./proc-defaults.js";
import { encodeShimConfig } from "./shim-config.js";
import { signalNumber } from "./signals.js";
import { startError } from "./start-error.js";
import { VolumeDirs } from "./volume-dirs.js";

export interface RuntimeOptions {
  /** The state directory (default /var/lib/fleetlet). */
  root: string;
  native?: NativeBinding;
  cgroups?: Cgroups;
  cgroupParent?: string;
  /**
   * Older kernels' paths, forced where the newer call works (tests): the shim lists /proc/self/fd
   * (before 5.11's close_range), forks an init then moves it into its cgroup v2 (before 5.7's
   * clone3 placing it there at birth), and mounts the overlay without `volatile` (before 5.10).
   */
  fdScan?: boolean;
  cgroupMove?: boolean;
  overlaySync?: boolean;
  /** Where the one warning about a state root left open goes (stderr by default). */
  warn?: Warn;
  /** The host's device directory: a device's `/dev/…` path is looked up under it (default /dev). */
  devRoot?: string;
}

export class Runtime {
  readonly root: string;
  readonly cgroups: Cgroups;
  readonly network: ContainerNetwork;
  private readonly native: NativeBinding;
  private readonly catalog: ContainerCatalog;
  private readonly volumes: VolumeDirs;
  private readonly eraser: BackgroundEraser;
  private readonly fallbacks: { fdScan: boolean; cgroupMove: boolean; overlaySync: boolean };
  readonly devices: ContainerDevices;

  constructor(opts: RuntimeOptions) {
    this.root = opts.root;
    this.native = opts.native ?? loadNative();
    secureStateRoot(this.root, opts.warn);
    this.volumes = new VolumeDirs(this.root, this.native.core);
    this.cgroups = opts.cgroups ?? new Cgroups(detectCgroupLayout(), opts.cgroupParent ?? cgroupParentFor(opts.root));
    this.catalog = new ContainerCatalog(this.root, this.native);
    const { fdScan = false, cgroupMove = false, overlaySync = false } = opts;
    this.fallbacks = { fdScan, cgroupMove, overlaySync };
    this.devices = new ContainerDevices(opts.devRoot ?? "/dev", this.native.shimPath);
    this.network = new ContainerNetwork({
      root: this.root,
      shimPath: this.native.shimPath,
      liveInit: (id) => this.catalog.liveInit(id),
    });
    this.eraser = new BackgroundEraser((dir) => this.native.core.removeTree(dir));
  }

  private paths = (id: string): ContainerPaths => this.catalog.paths(id);
  private state = (id: string): ContainerState => this.catalog.state(id);

  /** The directory a container mounts for volume `name`. */
  volumeDir(name: string): string {
    return this.volumes.source(name);
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
    privateDir(join(this.root, "containers"));
    try {
      mkdirSync(paths.dir, { mode: PRIVATE_MODE });
    } catch (err) {
      if (isErrno(err, "EEXIST"))
        throw new FleetError("E_CONFLICT", `a container named ${id} already exists`, { exitCode: 125 });
      throw err;
    }
    const state: ContainerState = { id, createdAt: new Date().toISOString(), spec };
    writeState(paths, state);
    return { id, status: "created", createdAt: state.createdAt, spec };
  }

  async start(id: string, opts: { foreground?: boolean } = {}): Promise<ContainerInfo> {
    const paths = this.paths(id);
    const state = this.state(id);
    if (existsSync(paths.running))
      throw new FleetError("E_CONFLICT", `container ${id} has already been started`, { exitCode: 125 });
    const { spec } = state;
    await this.volumes.prepare(spec.volumes.map((v) => v.name));
    const devices = this.devices.forStart(id, spec.devices);
    prepareOverlayDirs(paths);
    const groups = this.cgroups.plan(id, spec.resources, devices.map(deviceRule));
    const hostname = spec.hostname ?? id.slice(0, 63);
    const joined = spec.network === "bridge" ? await this.network.attach(id, spec) : undefined;
    const config = encodeShimConfig({
      joined,
      id,
      spec,
      env: withDefaults(spec, hostname),
      hostname,
      paths,
      cgroups: groups,
      capabilities: capabilitySet(spec.capAdd, spec.capDrop),
      volumeDir: (n) => this.volumeDir(n),
      devices,
      ...this.fallbacks,
    });
    let started: SpawnResult;
    try {
      started = await this.native.core.spawnShim(this.native.shimPath, config, opts.foreground ?? false);
    } catch (err) {
      await this.cgroups.remove(id);
      if (joined) await this.network.detach(id);
      throw startError(id, err);
    }
    if (devices.length > 0) this.devices.record(paths.dir, devices);
    return {
      id,
      status: "running",
      createdAt: state.createdAt,
      startedAt: new Date().toISOString(),
      pid: started.initPid,
      spec,
    };
  }

  /** Sends a signal to the container's init; false when it has already exited. */
  kill(id: string, signal: string | number = "SIGKILL"): boolean {
    this.state(id);
    const running = readRunning(this.paths(id));
    if (!running) throw new FleetError("E_CONFLICT", `container ${id} is not running`);
    return this.native.core.signalProcess(running.init.pid, BigInt(running.init.startTime), signalNumber(signal));
  }

  /** Resolves with the exit record once the container has exited. Never polls. */
  wait(id: string, signal?: AbortSignal): Promise<ExitRecord> {
    const paths = this.paths(id);
    this.state(id);
    const done = readExit(paths);
    if (done) return Promise.resolve(done);
    const running = readRunning(paths);
    if (!running) return Promise.reject(new FleetError("E_CONFLICT", `container ${id} has not been started`));
    const shim = running.shim;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        watch.close();
        reject(signal?.reason ?? new Error("aborted"));
      };
      const watch = new this.native.core.ExitWatch(shim.pid, BigInt(shim.startTime), () => {
        signal?.removeEventListener("abort", onAbort);
        const exit = readExit(paths);
        const died = `container ${id}: its shim (pid ${shim.pid}) died without recording the exit`;
        if (exit) resolve(exit);
        else reject(new FleetError("E_RUNTIME", died));
      });
      if (signal?.aborted) onAbort();
      else signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Runs a command inside the running container (its namespaces, cgroups and
   * privilege limits) through the shim's exec mode: for healthchecks.
   */
  exec(id: string, command: string[], opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<ExecResult> {
    const state = this.state(id);
    const running = readRunning(this.paths(id));
    if (!running || readExit(this.paths(id)))
      return Promise.reject(new FleetError("E_CONFLICT", `container ${id} is not running`));
    const cgroupDirs = this.cgroups.locate(id).dirs.values();
    const { fdScan } = this.fallbacks; // no init to place: cgroupMove is not the helper's
    return execInContainer(
      { shimPath: this.native.shimPath, id, spec: state.spec, init: running.init, cgroupDirs, fdScan },
      command,
      opts,
    );
  }

  /** Follows a running container's host devices (see ContainerDevices.follow): whether each is there now. */
  absentDevices = (id: string): string[] => this.devices.absent(this.state(id).spec.devices);

  followDevices(id: string): Promise<DevicePresence[]> {
    const [paths, running] = [this.paths(id), readRunning(this.paths(id))];
    if (!running || readExit(paths))
      return Promise.reject(new FleetError("E_CONFLICT", `container ${id} is not running`));
    const cgroupDir = this.cgroups.locate(id).dirs.get(this.cgroups.mode === "v2" ? "unified" : "devices")!;
    const target = { id, dir: paths.dir, init: running.init, mode: this.cgroups.mode, cgroupDir };
    return this.devices.follow(target, this.state(id).spec.devices);
  }

  /** The stop signal, then SIGKILL once the timeout has passed. */
  async stop(id: string, opts: { timeoutMs?: number; signal?: string } = {}): Promise<ExitRecord> {
    const state = this.state(id);
    const done = readExit(this.paths(id));
    if (done) return done;
    if (!existsSync(this.paths(id).running)) throw new FleetError("E_CONFLICT", `container ${id} is not running`);
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
      if (!opts.force)
        throw new FleetError("E_CONTAINER_RUNNING", `container ${id} is running: stop it first or force the removal`);
      this.kill(id, "SIGKILL");
      await this.wait(id);
    }
    await this.cgroups.remove(id);
    if (info.spec.network === "bridge") await this.network.detach(id);
    this.catalog.forget(id);
    this.devices.forget(id);
    // One rename takes the container out of sight at once; its writable layer
    // is then erased in the background (see settled()).
    const retired = join(this.root, "containers", `.removed-${id}-${randomBytes(4).toString("hex")}`);
    renameSync(paths.dir, retired);
    this.eraser.erase(retired);
  }

  /** Resolves once removed containers' files are erased; rejects if that failed. */
  settled(): Promise<void> {
    return this.eraser.settled();
  }

  /** Erases what a removal interrupted by a crash left behind. */
  sweep(): void {
    for (const name of this.catalog.dirNames(true)) {
      if (name.startsWith(".removed-")) this.eraser.erase(join(this.root, "containers", name));
    }
  }

  inspect(id: string): ContainerInfo {
    return this.catalog.inspect(id);
  }

  list(): ContainerInfo[] {
    return this.catalog.list();
  }

  stats(id: string): ContainerStats {
    this.state(id);
    return this.cgroups.stats(id);
  }

  logs(id: string, opts: { tail?: number } = {}): string {
    return readLog(this.paths(id).log, this.state(id).spec.log.keep, opts.tail);
  }
}
