/**
 * The container's cgroups: one directory per hierarchy under a `fleetlet`
 * parent, with the limits and device rules the shim puts in place before it
 * joins the init to them, usage read back, and removal once the processes
 * are gone. cgroupfs calls are kernel bookkeeping, not disk I/O, so they run
 * synchronously.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { DEFAULT_ROOT } from "../../schemas/config.js";
import type { ContainerStats } from "../../schemas/container.js";
import { FleetError, isErrno } from "../errors.js";
import { type CgroupLayout, V1_CONTROLLERS } from "./cgroup-layout.js";
import { type Limits, limitWrites, oomCounterFile, statFiles } from "./cgroup-limits.js";
import { DEFAULT_DEVICE_RULES, deviceWrites } from "./device-rules.js";

export interface ContainerCgroups {
  /** hierarchy ("memory", "cpu", …, "unified") → directory */
  dirs: Map<string, string>;
  oomFile: string | null;
}

export interface CgroupPlan extends ContainerCgroups {
  writes: { file: string; value: string; optional: boolean }[];
  /** cgroup v2: the cgroup the shim attaches the device program to, and its rules. */
  devices: { dir: string; rules: string[] } | null;
}

/**
 * The cgroup parent of a state root's containers: `fleetlet` for the default
 * root, and one of its own for any other, so that two roots on one host (two
 * agents under test, `fleetlet run --root`) never share a container's cgroup.
 */
export function cgroupParentFor(root: string): string {
  const r = resolve(root);
  return r === DEFAULT_ROOT ? "fleetlet" : `fleetlet-${createHash("sha256").update(r).digest("hex").slice(0, 12)}`;
}

/** Bound on the remembered cgroup locations. */
const LOCATED_KEPT = 1024;

export class Cgroups {
  private controllersEnabled = false;
  /** v2: the controllers the hierarchy root offers (read when they are enabled). */
  private available: string[] = [];
  /** Each container's cgroups, located once: the agent reads their figures at every report. */
  private readonly located = new Map<string, ContainerCgroups>();

  constructor(
    private readonly layout: CgroupLayout,
    private readonly parent = "fleetlet",
  ) {}

  get mode(): CgroupLayout["mode"] {
    return this.layout.mode;
  }

  /** The directories a container's cgroups have (or would have). Not to be changed by the caller. */
  locate(id: string): ContainerCgroups {
    let found = this.located.get(id);
    if (!found) {
      if (this.located.size >= LOCATED_KEPT) this.located.clear();
      found = this.find(id);
      this.located.set(id, found);
    }
    return found;
  }

  private find(id: string): ContainerCgroups {
    const dirs = new Map<string, string>();
    for (const c of V1_CONTROLLERS) {
      const mount = this.layout.v1.get(c);
      if (mount) dirs.set(c, join(mount, this.parent, id));
    }
    // On a hybrid host every limit and the device rules live in v1, so the unified tree is left alone.
    if (this.layout.mode === "v2" && this.layout.unified)
      dirs.set("unified", join(this.layout.unified, this.parent, id));
    const oom = oomCounterFile(this.layout.mode);
    const oomDir = dirs.get(oom.hierarchy);
    return { dirs, oomFile: oomDir ? join(oomDir, oom.file) : null };
  }

  /**
   * The container's cgroups, the limit and device-rule writes that go into
   * them (the default device rules and `devices`, one rule per host device), and on v2 where the device program goes. The shim creates the
   * directories, writes the files and attaches the program (while the init
   * builds its rootfs), then joins the init; a failure comes back naming the
   * file.
   */
  plan(id: string, limits: Limits, devices: readonly string[] = []): CgroupPlan {
    const groups = this.locate(id);
    if (this.layout.mode === "v2") this.enableControllers();
    for (const [hierarchy, dir] of groups.dirs) createParent(dirname(dir), hierarchy);
    const rules = [...DEFAULT_DEVICE_RULES, ...devices];
    const all = [...limitWrites(this.layout.mode, limits), ...deviceWrites(this.layout.mode, rules)];
    const writes = all.map((w) => {
      const dir = groups.dirs.get(w.hierarchy);
      if (!dir)
        throw new FleetError("E_CGROUP", `cannot apply ${w.file}: the ${w.hierarchy} cgroup controller is not mounted`);
      if (this.layout.mode === "v2") this.requireDelegated(w.file);
      return { file: join(dir, w.file), value: w.value, optional: w.optional ?? false };
    });
    return { ...groups, writes, devices: this.devicePlan(groups, rules) };
  }

  /** v2: the device rules go to the shim's BPF program, in the container's one cgroup. */
  private devicePlan(groups: ContainerCgroups, rules: string[]): CgroupPlan["devices"] {
    if (this.layout.mode !== "v2") return null;
    const dir = groups.dirs.get("unified");
    if (!dir) throw new FleetError("E_CGROUP", "cannot apply the device rules: no cgroup2 hierarchy is mounted");
    return { dir, rules };
  }

  /**
   * v2: a limit needs its controller (the file's prefix: memory, cpu, pids) in
   * the hierarchy root's cgroup.controllers. Without it the file does not
   * exist, and the shim's ENOENT would not say why: the controller is bound
   * to a v1 hierarchy, or whoever gave this agent its cgroup namespace (a
   * container manager, systemd-nspawn) delegated none.
   */
  private requireDelegated(file: string): void {
    const controller = file.slice(0, file.indexOf("."));
    if (!["memory", "cpu", "pids"].includes(controller) || this.available.includes(controller)) return;
    const root = this.layout.unified!;
    throw new FleetError(
      "E_CGROUP",
      `cannot apply ${file}: the ${controller} controller is not available in the cgroup2 hierarchy ${root} ` +
        `(its cgroup.controllers lists ${this.available.length ? this.available.join(", ") : "none"}): ` +
        "it is bound to a cgroup v1 hierarchy or was not delegated to this system, so that limit cannot be set here",
    );
  }

  /** v2 only: let the parent hand memory, cpu and pids down to containers. */
  private enableControllers(): void {
    if (this.controllersEnabled) return;
    const root = this.layout.unified!;
    const available = readFileSync(join(root, "cgroup.controllers"), "utf8").trim().split(/\s+/).filter(Boolean);
    this.available = available;
    const wanted = ["memory", "cpu", "pids"].filter((c) => available.includes(c));
    const parentDir = join(root, this.parent);
    mkdirSync(parentDir, { recursive: true });
    for (const dir of [root, parentDir]) {
      const file = join(dir, "cgroup.subtree_control");
      const enabled = readFileSync(file, "utf8").trim().split(/\s+/);
      const missing = wanted.filter((c) => !enabled.includes(c));
      if (missing.length === 0) continue;
      try {
        writeFileSync(file, missing.map((c) => `+${c}`).join(" "));
      } catch (err) {
        throw new FleetError("E_CGROUP", `enable ${missing.join(", ")} in ${file}: ${(err as Error).message}`, {
          cause: err,
        });
      }
    }
    this.controllersEnabled = true;
  }

  stats(id: string): ContainerStats {
    const { dirs } = this.locate(id);
    const out: ContainerStats = { memoryBytes: 0, cpuNanos: 0, pids: 0 };
    for (const [key, spec] of Object.entries(statFiles(this.layout.mode)) as [
      keyof ContainerStats,
      ReturnType<typeof statFiles>["pids"],
    ][]) {
      const dir = dirs.get(spec.hierarchy);
      if (!dir) continue;
      try {
        const text = readFileSync(`${dir}/${spec.file}`, "utf8");
        const raw = spec.key ? new RegExp(`^${spec.key} (\\d+)$`, "m").exec(text)?.[1] : text.trim();
        out[key] = Number(raw ?? 0) * spec.scale;
      } catch (err) {
        if (!isErrno(err, "ENOENT")) throw err;
        // the cgroup is already gone: the figures are zero
      }
    }
    return out;
  }

  /** Removes the container's cgroups, killing any process still in them. */
  async remove(id: string): Promise<void> {
    for (const dir of new Set(this.locate(id).dirs.values())) {
      for (let attempt = 0; ; attempt++) {
        try {
          rmdirSync(dir);
          break;
        } catch (err) {
          if (isErrno(err, "ENOENT")) break;
          if (!isErrno(err, "EBUSY") || attempt >= 100) {
            throw new FleetError("E_CGROUP", `remove cgroup ${dir}: ${(err as Error).message}`, { cause: err });
          }
          killAll(dir);
          await sleep(10);
        }
      }
    }
    this.located.delete(id);
  }

  /**
   * Removes the parent of this root's container cgroups from every hierarchy
   * where it is empty (a state root that is being removed, such as a test's);
   * one that still holds a container's cgroup is left. The parents removed.
   */
  removeParent(): string[] {
    const removed: string[] = [];
    const roots = [...this.layout.v1.values(), ...(this.layout.unified ? [this.layout.unified] : [])];
    for (const dir of new Set(roots.map((r) => join(r, this.parent)))) {
      try {
        rmdirSync(dir);
        removed.push(dir);
      } catch (err) {
        // Never made in this hierarchy, or a container's cgroup is still inside: nothing to remove.
        if (!isErrno(err, "ENOENT") && !isErrno(err, "EBUSY") && !isErrno(err, "ENOTEMPTY")) throw err;
      }
    }
    return removed;
  }
}

/**
 * Creates a hierarchy's parent of the containers' cgroups. A read-only
 * hierarchy is what a system without cgroup delegation sees (systemd-nspawn
 * mounts the v1 controllers read-only in its guests): the error says so
 * rather than a bare EROFS, since no container can start there.
 */
function createParent(dir: string, hierarchy: string): void {
  try {
    // Not recursive: the parent sits right under the hierarchy's mount point, and Node's recursive
    // mkdir reports a read-only file system as ENOENT.
    mkdirSync(dir);
  } catch (err) {
    if (isErrno(err, "EEXIST")) return;
    const why = isErrno(err, "EROFS")
      ? `the ${hierarchy} cgroup hierarchy is mounted read-only, so this system was not delegated its cgroups ` +
        "(as in a systemd-nspawn guest on a cgroup v1 or hybrid host): fleetlet cannot create container cgroups " +
        "for limits and device rules here; run it where the cgroup hierarchies are writable " +
        "(on the host, or in a guest booted on the unified cgroup2 hierarchy)"
      : (err as Error).message;
    throw new FleetError("E_CGROUP", `create cgroup ${dir}: ${why}`, { cause: err });
  }
}

function killAll(dir: string): void {
  let pids: string[] = [];
  try {
    pids = readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n").filter(Boolean);
  } catch (err) {
    if (!isErrno(err, "ENOENT")) throw err;
  }
  for (const pid of pids) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch (err) {
      if (!isErrno(err, "ESRCH")) throw err; // already exited
    }
  }
}
