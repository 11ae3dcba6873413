import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    // Three files at a time: most integration tests wait on containers, brokers and
    // registries rather than compute, and vitest's default on 2 cores is one. On a
    // 2-core VM where each page fault traps to the hypervisor, the suite took 700 s
    // with two and 599 s with three (the CPU busy 72% of it); with four, 544 s, but
    // a systemd guest's boot (systemd-nspawn.test.ts) then outran its 120 s.
    maxWorkers: 3,
    minWorkers: 1,
    globalSetup: ["test/setup/global-setup.ts"],
    reporters: ["default", "./test/setup/summary-reporter.ts"],
  },
});
