/**
 * The containers of a state root as they are on disk: each one's state
 * (parsed once, see state()), its status from the shim's records and from
 * whether its shim still lives, and the listing of the containers directory.
 * Processes are named by (pid, start time), so a reused pid is never
 * mistaken for the container's shim.
 */
import { existsSync, readdirSync, type Stats, statSync } from "node:fs";
import { join } from "node:path";
import type { ContainerInfo, ContainerState, ContainerStatus } from "../../schemas/container.js";
import { FleetError, isErrno } from "../errors.js";
import type { NativeBinding } from "../system/native.js";
import { type ContainerPaths, containerPaths, readExit, readRunning, readState } from "./container-dir.js";

/** Bound on the remembered paths. */
const PATHS_KEPT = 1024;

export class ContainerCatalog {
  private readonly states = new Map<string, { state: ContainerState; ino: number; mtimeMs: number }>();
  /** Each container's paths, made once: the agent looks them up at every report. */
  private readonly pathsOf = new Map<string, ContainerPaths>();

  constructor(
    private readonly root: string,
    private readonly native: NativeBinding,
  ) {}

  paths(id: string): ContainerPaths {
    let paths = this.pathsOf.get(id);
    if (!paths) {
      if (this.pathsOf.size >= PATHS_KEPT) this.pathsOf.clear(); // ids asked for that never were containers
      paths = containerPaths(this.root, id);
      this.pathsOf.set(id, paths);
    }
    return paths;
  }

  /**
   * The container's state.json, parsed once: it never changes after create,
   * and its inode and mtime tell a cached copy from a newer container of the
   * same name.
   */
  state(id: string): ContainerState {
    const paths = this.paths(id);
    let st: Stats;
    try {
      st = statSync(paths.state);
    } catch (err) {
      if (isErrno(err, "ENOENT")) throw new FleetError("E_NOT_FOUND", `no such container: ${id}`);
      throw err;
    }
    const cached = this.states.get(id);
    if (cached && cached.ino === st.ino && cached.mtimeMs === st.mtimeMs) return cached.state;
    const state = readState(paths, id);
    this.states.set(id, { state, ino: st.ino, mtimeMs: st.mtimeMs });
    return state;
  }

  /** Drops the cached state of a container being removed. */
  forget(id: string): void {
    this.states.delete(id);
    this.pathsOf.delete(id);
  }

  inspect(id: string): ContainerInfo {
    return this.describe(this.state(id), this.paths(id));
  }

  list(): ContainerInfo[] {
    const out: ContainerInfo[] = [];
    for (const id of this.dirNames().sort()) {
      const paths = this.paths(id);
      if (!existsSync(paths.state)) continue; // a create that was interrupted before its state was written
      out.push(this.describe(this.state(id), paths));
    }
    return out;
  }

  /** The names in the containers directory; with `includeRetired`, also the `.removed-*` ones being erased. */
  dirNames(includeRetired = false): string[] {
    try {
      return readdirSync(join(this.root, "containers")).filter((n) => includeRetired || !n.startsWith("."));
    } catch (err) {
      if (isErrno(err, "ENOENT")) return [];
      throw err;
    }
  }

  /** The container's init while it runs (its pid checked against its start time); undefined otherwise. */
  liveInit(id: string): { pid: number; startTime: string } | undefined {
    const paths = this.paths(id);
    const running = readRunning(paths);
    if (!running || readExit(paths)) return undefined;
    const { pid, startTime } = running.init;
    return this.native.core.startTime(pid) === BigInt(startTime) ? { pid, startTime } : undefined;
  }

  private describe(state: ContainerState, paths: ContainerPaths): ContainerInfo {
    const exit = readExit(paths);
    const running = readRunning(paths);
    let status: ContainerStatus = "created";
    if (exit) status = "exited";
    else if (running) {
      const alive = this.native.core.startTime(running.shim.pid) === BigInt(running.shim.startTime);
      status = alive ? "running" : "exited";
    }
    return {
      id: state.id,
      status,
      createdAt: state.createdAt,
      startedAt: running?.startedAt,
      pid: running?.init.pid,
      exit,
      spec: state.spec,
    };
  }
}
