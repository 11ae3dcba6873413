import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    // Two files at a time: most integration tests wait on containers, brokers and
    // registries rather than compute, and vitest's default on 2 cores is one.
    maxWorkers: 2,
    minWorkers: 1,
    globalSetup: ["test/setup/global-setup.ts"],
    reporters: ["default", "./test/setup/summary-reporter.ts"],
  },
});
