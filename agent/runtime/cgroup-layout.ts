/**
 * Which cgroup layout this host has, detected as crun does: statfs of
 * /sys/fs/cgroup (cgroup2 → unified v2; tmpfs → v1 controllers), then of
 * /sys/fs/cgroup/unified (cgroup2 there → hybrid). The v1 controllers are
 * found in /proc/self/mountinfo, so co-mounted ones ("cpu,cpuacct") work.
 */
import { readFileSync, statfsSync } from "node:fs";
import { join } from "node:path";
import type { CgroupMode } from "../../schemas/container.js";

export const CGROUP2_SUPER_MAGIC = 0x63677270;
export const TMPFS_MAGIC = 0x01021994;

export interface CgroupLayout {
  mode: CgroupMode;
  /** v1 controller name → its hierarchy's mount point (v1 and hybrid). */
  v1: Map<string, string>;
  /** The cgroup2 mount point (v2 and hybrid). */
  unified: string | null;
}

/** The controllers fleetlet joins and limits on v1 (devices: the default device rules). */
export const V1_CONTROLLERS = ["memory", "cpu", "cpuacct", "pids", "devices"] as const;

export function classifyLayout(rootType: number, unifiedType: number | null): CgroupMode {
  if (rootType === CGROUP2_SUPER_MAGIC) return "v2";
  return unifiedType === CGROUP2_SUPER_MAGIC ? "hybrid" : "v1";
}

/** v1 controller mount points from mountinfo text. */
export function parseV1Mounts(mountinfo: string): Map<string, string> {
  const mounts = new Map<string, string>();
  for (const line of mountinfo.split("\n")) {
    const sep = line.indexOf(" - ");
    if (sep < 0) continue;
    const before = line.slice(0, sep).split(" ");
    const [fstype, , superOptions = ""] = line.slice(sep + 3).split(" ");
    const mountPoint = before[4];
    if (fstype !== "cgroup" || !mountPoint) continue;
    for (const opt of superOptions.split(",")) {
      if ((V1_CONTROLLERS as readonly string[]).includes(opt) && !mounts.has(opt)) {
        mounts.set(opt, mountPoint.replace(/\\040/g, " "));
      }
    }
  }
  return mounts;
}

function fsType(path: string): number | null {
  try {
    return statfsSync(path).type;
  } catch {
    return null; // absent: that hierarchy is simply not mounted
  }
}

export function detectCgroupLayout(root = "/sys/fs/cgroup", mountinfoPath = "/proc/self/mountinfo"): CgroupLayout {
  const rootType = fsType(root) ?? TMPFS_MAGIC;
  const unifiedPath = join(root, "unified");
  const mode = classifyLayout(rootType, rootType === CGROUP2_SUPER_MAGIC ? null : fsType(unifiedPath));
  return {
    mode,
    v1: mode === "v2" ? new Map() : parseV1Mounts(readFileSync(mountinfoPath, "utf8")),
    unified: mode === "v2" ? root : mode === "hybrid" ? unifiedPath : null,
  };
}
