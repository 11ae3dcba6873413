/**
 * A container's host devices: resolved to their nodes when it starts (the
 * shim makes each node in the container's /dev and the device cgroup allows
 * it), and again whenever a device may have come or gone, so that a running
 * container follows a device unplugged and plugged back: its node goes and
 * comes back (with the device's new numbers) and its cgroup rule with it,
 * the container untouched. What the container's /dev holds is recorded in
 * its directory (devices.json), so a restarted agent carries on from there.
 *
 * Nodes in a running container are made and removed by `fleetlet-shim
 * devnode`, from inside the container's mount namespace (devnodes.c), never
 * through a host path into the container's root.
 */
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import type { CgroupMode, ProcessRef } from "../../schemas/container.js";
import { type DeviceNode, type DevicePresence, type DeviceRequest, recordedDevices } from "../../schemas/device.js";
import { FleetError, isErrno } from "../errors.js";
import { writeFileAtomic } from "./container-dir.js";
import { resolveDevice } from "./device-nodes.js";
import { DEFAULT_DEVICE_RULES, deviceRule, ruleChanges } from "./device-rules.js";

const run = promisify(execFile);

/** Thrown when a device is absent at start: the agent waits for it (E_DEVICE_ABSENT), `fleetlet run` fails. */
export function absentError(id: string, paths: string[], devRoot: string): FleetError {
  const where = devRoot === "/dev" ? "" : ` (device root ${devRoot})`;
  return new FleetError("E_DEVICE_ABSENT", `container ${id}: device ${paths.join(", ")} is absent${where}`, {
    exitCode: 125,
  });
}

/** What following a running container's devices needs to know of it. */
export interface DeviceFollowTarget {
  id: string;
  /** The container's directory (devices.json). */
  dir: string;
  init: ProcessRef;
  mode: CgroupMode;
  /** v1 and hybrid: the container's devices cgroup; v2: its one cgroup. */
  cgroupDir: string;
}

const same = (a: DeviceNode | null, b: DeviceNode | null) => JSON.stringify(a) === JSON.stringify(b);
const rulesOf = (nodes: (DeviceNode | null)[]) => new Set(nodes.flatMap((n) => (n ? [deviceRule(n)] : [])));

export class ContainerDevices {
  /** Containers whose cgroup rules this process has put in line with their devices since it began. */
  private readonly inLine = new Set<string>();

  constructor(
    readonly devRoot: string,
    private readonly shimPath: string,
  ) {}

  /** Each request's node now, or null where the device is absent (or its path no longer leads to a device). */
  resolve(requests: readonly DeviceRequest[]): (DeviceNode | null)[] {
    return requests.map((r) => {
      try {
        return resolveDevice(this.devRoot, r) ?? null;
      } catch (err) {
        if ((err as FleetError).code === "E_DEVICE") return null; // followed as absent; a start says why
        throw err;
      }
    });
  }

  /** The paths of the requested devices that are absent now. */
  absent(requests: readonly DeviceRequest[]): string[] {
    const nodes = this.resolve(requests);
    return requests.filter((_, i) => nodes[i] === null).map((r) => r.path);
  }

  /** The nodes a container starts with; E_DEVICE_ABSENT naming every device that is not there. */
  forStart(id: string, requests: readonly DeviceRequest[]): DeviceNode[] {
    const nodes = requests.map((r) => resolveDevice(this.devRoot, r));
    const absent = requests.filter((_, i) => nodes[i] === undefined).map((r) => r.path);
    if (absent.length > 0) throw absentError(id, absent, this.devRoot);
    return nodes as DeviceNode[];
  }

  /** Records what a container's /dev holds (after its start, and after each change). */
  record(dir: string, nodes: (DeviceNode | null)[]): void {
    writeFileAtomic(join(dir, "devices.json"), `${JSON.stringify(nodes)}\n`);
  }

  private recordedNodes(dir: string, count: number): (DeviceNode | null)[] {
    try {
      const parsed = recordedDevices.safeParse(JSON.parse(readFileSync(join(dir, "devices.json"), "utf8")));
      if (parsed.success && parsed.data.length === count) return parsed.data;
    } catch (err) {
      if (!isErrno(err, "ENOENT") && !(err instanceof SyntaxError)) throw err;
      // absent or cut short: as if nothing were recorded, so every present device is made again
    }
    return Array.from({ length: count }, () => null);
  }

  /**
   * Brings a running container's devices in line with the host's: a node
   * whose device went is removed and its rule revoked; a device that came
   * (or came back under other numbers) gets its rule, then its node. Call
   * one at a time per container. Returns whether each device is there.
   */
  async follow(target: DeviceFollowTarget, requests: readonly DeviceRequest[]): Promise<DevicePresence[]> {
    const before = this.recordedNodes(target.dir, requests.length);
    const now = this.resolve(requests);
    const changed = requests.map((_, i) => !same(before[i]!, now[i]!));
    const [removeFailed, addFailed] = [new Map<number, string>(), new Map<number, string>()];
    let made = now;
    // The first look of this process puts the rules in line even if no device changed: an agent that
    // died between a rule and the record of its node may have left a rule devices.json does not name.
    const check = !this.inLine.has(target.id);
    this.inLine.delete(target.id); // until this look has done all it has to
    if (changed.some(Boolean) || check) {
      // A node that cannot be removed (reported) still loses its rule below.
      for (const [i, node] of before.entries()) {
        if (!changed[i] || !node) continue;
        await this.devnode(target, "remove", node).catch((err: Error) => removeFailed.set(i, err.message));
      }
      await this.updateRules(target, now);
      for (const [i, node] of now.entries()) {
        if (!changed[i] || !node) continue;
        await this.devnode(target, "add", node).catch((err: Error) => addFailed.set(i, err.message));
      }
      // A node that could not be made is not there: its rule goes again.
      made = now.map((n, i) => (addFailed.has(i) ? null : n));
      if (addFailed.size > 0) await this.updateRules(target, made);
      if (changed.some(Boolean)) this.record(target.dir, made);
    }
    this.inLine.add(target.id);
    return requests.map((r, i) => {
      const error = addFailed.get(i) ?? removeFailed.get(i);
      return { path: r.path, target: r.target ?? r.path, present: made[i] !== null, ...(error ? { error } : {}) };
    });
  }

  /** Forgets a removed container. */
  forget(id: string): void {
    this.inLine.delete(id);
  }

  /**
   * v1: allow what is new and deny what no rule gives any more, from what
   * the cgroup's devices.list holds now, leaving the rest in place; v2: the
   * whole list, replaced atomically.
   */
  private async updateRules(t: DeviceFollowTarget, now: (DeviceNode | null)[]) {
    const is = rulesOf(now);
    if (t.mode === "v2") {
      await this.shim(["devices", t.cgroupDir, ...DEFAULT_DEVICE_RULES, ...is], `the device program of ${t.id}`);
      return;
    }
    const { allow, deny } = ruleChanges(readRules(t.cgroupDir), is);
    for (const rule of allow) writeRule(t.cgroupDir, "devices.allow", rule);
    for (const rule of deny) writeRule(t.cgroupDir, "devices.deny", rule);
  }

  private devnode(t: DeviceFollowTarget, op: "add" | "remove", n: DeviceNode): Promise<void> {
    const args = ["devnode", String(t.init.pid), t.init.startTime, op, n.target];
    if (op === "add") args.push(n.type, ...[n.major, n.minor, n.mode, n.uid, n.gid].map(String));
    return this.shim(args, `${op === "add" ? "make" : "remove"} ${n.target} in ${t.id}`);
  }

  private async shim(args: string[], what: string): Promise<void> {
    try {
      await run(this.shimPath, args, { timeout: 10_000 });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new FleetError("E_DEVICE", `${what}: ${(e.stderr || e.message).trim()}`, { cause: err });
    }
  }
}

/** The rules a v1 devices cgroup holds ("c 1:3 rwm", one per line); E_CGROUP if it allows every device. */
function readRules(dir: string): string[] {
  const path = join(dir, "devices.list");
  let rules: string[];
  try {
    rules = readFileSync(path, "utf8").split("\n").filter(Boolean);
  } catch (err) {
    throw new FleetError("E_CGROUP", `read ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (rules.some((r) => r.startsWith("a ")))
    throw new FleetError("E_CGROUP", `${path}: the container's devices cgroup allows every device (${rules[0]})`);
  return rules;
}

function writeRule(dir: string, file: string, rule: string): void {
  const path = join(dir, file);
  try {
    writeFileSync(path, rule); // one entry per write, as the devices controller takes them
  } catch (err) {
    throw new FleetError("E_CGROUP", `write ${rule} to ${path}: ${(err as Error).message}`, { cause: err });
  }
}
