/**
 * A desired document's `"init": true` through `fleetlet apply`, with a real
 * registry: the service's PID 1 is the init, and replacing the service does
 * not wait out its stop timeout.
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type CliResult, fleetctl, runCli } from "../support/fleetlet-cli.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const rootfs = inject("busyboxRootfs");
let reg: RegistryFixture;
let root: string;
let work: string;
let config: string;
let image: string;
let generation = 0;

/** Long enough that a stop that waits it out is plain to see. */
const STOP_TIMEOUT_MS = 20_000;

function desired(services: Record<string, unknown>): string {
  generation++;
  const path = join(work, `desired-${generation}.json`);
  writeFileSync(
    path,
    // No health gate: its probation would lengthen the apply that the test times.
    JSON.stringify({
      apiVersion: "fleetlet/v1",
      deployment: `init-${generation}`,
      generation,
      services,
      update: { healthyWithinMs: 0 },
    }),
  );
  return path;
}
const apply = (file: string): Promise<CliResult> =>
  runCli("fleetlet", ["--root", root, "--config", config, "apply", file]);
const db = () => JSON.parse(readFileSync(join(root, "db.json"), "utf8"));

/** The service container's processes as the host sees them: PID 1's command line, and its children's. */
function pid1AndChildren(container: string): { pid1: string; children: string[] } {
  const init = JSON.parse(readFileSync(join(root, "containers", container, "running.json"), "utf8")).init.pid;
  const cmdline = (pid: number | string) => readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim();
  const children = readFileSync(`/proc/${init}/task/${init}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
  return { pid1: cmdline(init), children: children.map(cmdline) };
}

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-init-"));
  config = join(work, "config.json");
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: "dev-init",
      registries: registriesConfig(reg),
    }),
  );
  image = `${reg.host}/init/busybox:1`;
  expect(fleetctl(["--config", config, "push", rootfs, image]).status).toBe(0);
});

afterAll(async () => {
  await cleanupRoot(root);
  await reg.stop();
});

describe('a service with "init": true', () => {
  it("runs under the init, and is replaced without waiting out its stop timeout", async () => {
    const service = { image, command: ["sleep", "1000"], init: true, stopTimeoutMs: STOP_TIMEOUT_MS };
    const first = await apply(desired({ app: service }));
    expect(first.status, first.stderr).toBe(0);
    const container = db().services.app.containerId as string;
    expect(pid1AndChildren(container)).toEqual({
      pid1: "/dev/init init --error-fd 3 -- sleep 1000",
      children: ["sleep 1000"],
    });

    // A changed command replaces the container: the old one gets its stop signal.
    const t0 = Date.now();
    const second = await apply(desired({ app: { ...service, command: ["sleep", "1001"] } }));
    const ms = Date.now() - t0;
    expect(second.status, second.stderr).toBe(0);
    expect(db().services.app.containerId).not.toBe(container);
    // Without the init, sleep as PID 1 ignores SIGTERM and the stop alone takes 20 s.
    expect(ms).toBeLessThan(STOP_TIMEOUT_MS / 2);
  });
});
