import { describe, expect, it } from "vitest";
import {
  type Limits,
  limitWrites,
  oomCounterFile,
  sharesToWeight,
  statFiles,
} from "../../agent/runtime/cgroup-limits.js";

describe("sharesToWeight", () => {
  it.each([
    [0, 0],
    [1, 1],
    [2, 1],
    [1024, 100],
    [262144, 10000],
    [300000, 10000],
    [512, 59],
    [2048, 174],
    [256, 35],
    [4096, 303],
  ])("maps %i shares to weight %i", (shares, weight) => {
    expect(sharesToWeight(shares)).toBe(weight);
  });

  it("is monotonic over the whole range", () => {
    let prev = 0;
    for (let s = 2; s <= 262144; s += 97) {
      const w = sharesToWeight(s);
      expect(w).toBeGreaterThanOrEqual(prev);
      prev = w;
    }
  });
});

const MiB = 1024 * 1024;

describe("limitWrites", () => {
  const cases: { name: string; mode: "v1" | "v2" | "hybrid"; limits: Limits; expected: string[] }[] = [
    {
      name: "v1 memory limits memory and memory+swap alike",
      mode: "v1",
      limits: { memory: 32 * MiB },
      expected: ["memory/memory.limit_in_bytes=33554432", "memory/memory.memsw.limit_in_bytes=33554432?"],
    },
    {
      name: "v1 cpus become a CFS quota over a 100 ms period, and shares",
      mode: "v1",
      limits: { cpus: 0.25 },
      expected: ["cpu/cpu.cfs_period_us=100000", "cpu/cpu.cfs_quota_us=25000", "cpu/cpu.shares=256"],
    },
    {
      name: "hybrid hosts limit through the v1 controllers",
      mode: "hybrid",
      limits: { pids: 64, cpuShares: 512 },
      expected: ["cpu/cpu.shares=512", "pids/pids.max=64"],
    },
    {
      name: "v2 memory sets memory.max and no swap",
      mode: "v2",
      limits: { memory: 64 * MiB },
      expected: ["unified/memory.max=67108864", "unified/memory.swap.max=0?"],
    },
    {
      name: "v2 cpus become cpu.max and a converted weight",
      mode: "v2",
      limits: { cpus: 1.5 },
      expected: ["unified/cpu.max=150000 100000", `unified/cpu.weight=${sharesToWeight(1536)}`],
    },
    {
      name: "v2 pids",
      mode: "v2",
      limits: { pids: 128 },
      expected: ["unified/pids.max=128"],
    },
    { name: "no limits, no writes", mode: "v2", limits: {}, expected: [] },
    {
      name: "a tiny cpus value keeps the kernel's 1 ms minimum quota",
      mode: "v1",
      limits: { cpus: 0.001 },
      expected: ["cpu/cpu.cfs_period_us=100000", "cpu/cpu.cfs_quota_us=1000", "cpu/cpu.shares=2"],
    },
  ];
  it.each(cases)("$name", ({ mode, limits, expected }) => {
    const got = limitWrites(mode, limits).map((w) => `${w.hierarchy}/${w.file}=${w.value}${w.optional ? "?" : ""}`);
    expect(got).toEqual(expected);
  });
});

describe("usage and OOM files", () => {
  it.each([
    ["v1", "memory", "memory.oom_control"],
    ["hybrid", "memory", "memory.oom_control"],
    ["v2", "unified", "memory.events"],
  ] as const)("%s counts OOM kills in %s/%s", (mode, hierarchy, file) => {
    expect(oomCounterFile(mode)).toEqual({ hierarchy, file });
  });

  it("reads CPU time from cpuacct on v1 and cpu.stat usage_usec on v2", () => {
    expect(statFiles("v1").cpuNanos).toMatchObject({ hierarchy: "cpuacct", file: "cpuacct.usage", scale: 1 });
    expect(statFiles("v2").cpuNanos).toMatchObject({
      hierarchy: "unified",
      file: "cpu.stat",
      key: "usage_usec",
      scale: 1000,
    });
    expect(statFiles("v2").memoryBytes.file).toBe("memory.current");
    expect(statFiles("hybrid").memoryBytes.file).toBe("memory.usage_in_bytes");
  });
});
