/**
 * Resource limits as cgroup file writes, for v1 and v2. Pure: the same
 * limits give the same writes, so the mapping is tested without a kernel.
 * On a hybrid host the limits go to the v1 controllers.
 */
import type { CgroupMode, ContainerStats } from "../../schemas/container.js";

export interface Limits {
  memory?: number | undefined; // bytes; 0 or undefined: no limit
  cpus?: number | undefined; // cores
  cpuShares?: number | undefined; // v1 shares [2, 262144]
  pids?: number | undefined;
}

export interface CgroupWrite {
  /** The v1 controller whose hierarchy holds the file, or "unified". */
  hierarchy: string;
  file: string;
  value: string;
  /** Skipped without error when the kernel lacks the file (swap accounting off). */
  optional?: boolean;
}

export const CPU_PERIOD_US = 100_000;

/** Docker's rule: shares proportional to --cpus, 1024 per core. */
export function sharesForCpus(cpus: number): number {
  return Math.min(262144, Math.max(2, Math.round(cpus * 1024)));
}

/**
 * v1 cpu.shares to v2 cpu.weight with the quadratic that current crun and
 * runc use: it maps 2 → 1, 1024 → 100 (both defaults) and 262144 → 10000.
 */
export function sharesToWeight(shares: number): number {
  if (shares <= 0) return 0;
  if (shares <= 2) return 1;
  if (shares >= 262144) return 10000;
  const l = Math.log2(shares);
  const exponent = (l * l + 125 * l) / 612.0 - 7.0 / 34.0;
  return Math.ceil(10 ** exponent);
}

export function limitWrites(mode: CgroupMode, limits: Limits): CgroupWrite[] {
  const writes: CgroupWrite[] = [];
  const quota = limits.cpus ? Math.max(1000, Math.round(limits.cpus * CPU_PERIOD_US)) : undefined;
  const shares = limits.cpuShares ?? (limits.cpus ? sharesForCpus(limits.cpus) : undefined);
  if (mode === "v2") {
    const u = "unified";
    if (limits.memory) {
      writes.push({ hierarchy: u, file: "memory.max", value: String(limits.memory) });
      writes.push({ hierarchy: u, file: "memory.swap.max", value: "0", optional: true });
    }
    if (quota) writes.push({ hierarchy: u, file: "cpu.max", value: `${quota} ${CPU_PERIOD_US}` });
    if (shares) writes.push({ hierarchy: u, file: "cpu.weight", value: String(sharesToWeight(shares)) });
    if (limits.pids) writes.push({ hierarchy: u, file: "pids.max", value: String(limits.pids) });
    return writes;
  }
  if (limits.memory) {
    writes.push({ hierarchy: "memory", file: "memory.limit_in_bytes", value: String(limits.memory) });
    // memory+swap equal to memory: no swap on top of the limit.
    writes.push({
      hierarchy: "memory",
      file: "memory.memsw.limit_in_bytes",
      value: String(limits.memory),
      optional: true,
    });
  }
  if (quota) {
    writes.push({ hierarchy: "cpu", file: "cpu.cfs_period_us", value: String(CPU_PERIOD_US) });
    writes.push({ hierarchy: "cpu", file: "cpu.cfs_quota_us", value: String(quota) });
  }
  if (shares) writes.push({ hierarchy: "cpu", file: "cpu.shares", value: String(shares) });
  if (limits.pids) writes.push({ hierarchy: "pids", file: "pids.max", value: String(limits.pids) });
  return writes;
}

/** Where the OOM-kill counter lives ("oom_kill N" in both). */
export function oomCounterFile(mode: CgroupMode): { hierarchy: string; file: string } {
  return mode === "v2"
    ? { hierarchy: "unified", file: "memory.events" }
    : { hierarchy: "memory", file: "memory.oom_control" };
}

/** Which files hold the usage figures, and how to read them. */
export function statFiles(
  mode: CgroupMode,
): Record<keyof ContainerStats, { hierarchy: string; file: string; key?: string; scale: number }> {
  if (mode === "v2") {
    return {
      memoryBytes: { hierarchy: "unified", file: "memory.current", scale: 1 },
      cpuNanos: { hierarchy: "unified", file: "cpu.stat", key: "usage_usec", scale: 1000 },
      pids: { hierarchy: "unified", file: "pids.current", scale: 1 },
    };
  }
  return {
    memoryBytes: { hierarchy: "memory", file: "memory.usage_in_bytes", scale: 1 },
    cpuNanos: { hierarchy: "cpuacct", file: "cpuacct.usage", scale: 1 },
    pids: { hierarchy: "pids", file: "pids.current", scale: 1 },
  };
}
