/**
 * `fleetlet apply`: the reconcile loop on real containers and a real
 * registry — convergence, updates, rollback, rejection, volumes.
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Runtime } from "../../agent/runtime/runtime.js";
import { type CliResult, fleetctl, fleetlet, runCli } from "../support/fleetlet-cli.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
let reg: RegistryFixture;
let root: string;
let work: string;
let config: string;
let image: string;
let generation = 0;

function desired(services: Record<string, unknown>, extra: Record<string, unknown> = {}): string {
  generation++;
  const path = join(work, `desired-${generation}.json`);
  writeFileSync(
    path,
    JSON.stringify({
      apiVersion: "fleetlet/v1",
      deployment: `dep-${generation}`,
      generation,
      services,
      update: { healthyWithinMs: 4000 },
      ...extra,
    }),
  );
  return path;
}
const apply = (file: string): Promise<CliResult> =>
  runCli("fleetlet", ["--root", root, "--config", config, "apply", file]);
const db = () => JSON.parse(readFileSync(join(root, "db.json"), "utf8"));
const pidOf = (container: string) =>
  JSON.parse(readFileSync(join(root, "containers", container, "running.json"), "utf8")).init.pid as number;
const webContainer = () => db().services.web.containerId as string;

/** The memory and pids limits the kernel holds a container to, read from its cgroups. */
function cgroupLimits(container: string): { memory: string; pids: string } {
  const runtime = new Runtime({ root });
  const { dirs } = runtime.cgroups.locate(container);
  const v2 = runtime.cgroups.mode === "v2";
  const read = (controller: string, file: string) => readFileSync(join(dirs.get(controller)!, file), "utf8").trim();
  return {
    memory: v2 ? read("unified", "memory.max") : read("memory", "memory.limit_in_bytes"),
    pids: v2 ? read("unified", "pids.max") : read("pids", "pids.max"),
  };
}

const web = (greeting: string, extra: Record<string, unknown> = {}) => ({
  image: "",
  command: ["/bin/sh", "-c", "echo GREETING=$GREETING; date > /data/last-start; exec sleep 1000"],
  env: { GREETING: greeting },
  volumes: [{ name: "webdata", target: "/data" }],
  // sleep as pid 1 ignores SIGTERM: do not wait the default 10 s for it
  stopTimeoutMs: 300,
  ...extra,
});

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-apply-"));
  config = join(work, "config.json");
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: "dev-apply",
      registries: registriesConfig(reg),
    }),
  );
  image = `${reg.host}/apply/busybox:1`;
  expect(fleetctl(["--config", config, "push", rootfs, image]).status).toBe(0);
});

afterAll(async () => {
  await cleanupRoot(root);
  await reg.stop();
});

describe("fleetlet apply", () => {
  it("converges on a desired state and reports it", async () => {
    const r = await apply(desired({ web: { ...web("hello"), image } }));
    expect(r.stderr).not.toContain('"type":"failed"');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/deployment dep-1 generation 1: converged/);
    expect(r.stdout).toMatch(/web\s+running\s+none\s+\d+\s+0\s+/);
    expect(fleetlet(root, ["logs", webContainer()]).stdout).toBe("GREETING=hello\n");
    expect(fleetlet(root, ["logs", "web"]).stdout).toBe("GREETING=hello\n"); // by service name too
    expect(db().lastGood.deployment).toBe("dep-1");
  });

  it("holds a service that sets no limits to the policy's defaults, so a fork bomb or a memory hog cannot take the device down", () => {
    expect(cgroupLimits(webContainer())).toEqual({ memory: String(256 * 1024 * 1024), pids: "512" });
  });

  it.each([
    ["the host's network", { network: "host" }, 'services.web.network: "host" is not allowed'],
    [
      "more memory than the device allows",
      { resources: { memory: "2Gi" } },
      "services.web.resources.memory: 2 GiB is above this device's maximum of 1 GiB (policy.max.memory)",
    ],
    [
      "a host device the policy does not list",
      { devices: [{ path: "/dev/ttyUSB0" }] },
      "services.web.devices[0].path: /dev/ttyUSB0 is not allowed by this device's policy (policy.devices: none)",
    ],
    [
      "an image from a registry the device has no settings for",
      { image: "evil.example:5000/x/y:1" },
      "services.web.image: registry evil.example:5000 is not allowed",
    ],
  ])(
    "refuses a document that asks for %s with E_POLICY, naming the field, and pulls and stops nothing",
    async (_what, extra, message) => {
      const container = webContainer();
      const pid = pidOf(container);
      const before = db().desired.deployment;
      const r = await apply(desired({ web: { ...web("greedy"), image, ...extra } }));
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain(message);
      expect(r.stderr).toContain("[E_POLICY]");
      // Only the deployment that runs is converged again (the apply's reattach): nothing of the refused one is pulled.
      const pulled = r.stderr
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as { type: string; image?: string })
        .filter((e) => e.type === "pulling");
      expect(pulled.every((e) => e.image === image)).toBe(true);
      expect(webContainer()).toBe(container);
      expect(pidOf(container)).toBe(pid);
      expect(db().desired.deployment).toBe(before);
    },
  );

  it("restarts nothing when a newer document has the same spec", async () => {
    const before = pidOf(webContainer());
    const r = await apply(desired({ web: { ...web("hello"), image } }));
    expect(r.status, r.stderr).toBe(0);
    expect(pidOf(webContainer())).toBe(before);
  });

  it("replaces the container when the env changes, keeping the volume", async () => {
    const before = webContainer();
    const firstStart = readFileSync(join(root, "volumes/webdata/data/last-start"), "utf8");
    const r = await apply(desired({ web: { ...web("bonjour"), image } }));
    expect(r.status, r.stderr).toBe(0);
    expect(webContainer()).not.toBe(before);
    expect(fleetlet(root, ["ps", "-a"]).stdout).not.toContain(before);
    expect(fleetlet(root, ["logs", webContainer()]).stdout).toBe("GREETING=bonjour\n");
    expect(readFileSync(join(root, "volumes/webdata/data/last-start"), "utf8")).not.toBe("");
    expect(firstStart).not.toBe("");
  });

  it("rolls a deployment whose command exits back to the last good one", async () => {
    const good = db().lastGood.deployment as string;
    const r = await apply(
      desired({ web: { ...web("broken"), image, command: ["/bin/sh", "-c", "echo dying; exit 3"] } }),
    );
    expect(r.status).not.toBe(0);
    expect(r.stdout).toMatch(/rolledBack/);
    expect(r.stderr).toMatch(/(not healthy within 4000 ms|unhealthy within 4000 ms of starting): web/);
    expect(r.stderr).toContain(`rolled back to ${good}`);
    // The restored service's shell echoes once it runs: a rollback has no probation to wait that out.
    const logs = () => fleetlet(root, ["logs", webContainer()]).stdout;
    await waitFor("the restored service's greeting", () => logs() !== "");
    expect(logs()).toBe("GREETING=bonjour\n");
    expect(fleetlet(root, ["ps"]).stdout).toContain(webContainer());
  });

  it("rolls back a deployment whose healthcheck fails", async () => {
    const r = await apply(
      desired({
        web: {
          ...web("sick"),
          image,
          healthcheck: { exec: ["/bin/sh", "-c", "test -e /healthy"], intervalMs: 200, retries: 2 },
        },
      }),
    );
    expect(r.status).not.toBe(0);
    expect(r.stdout).toMatch(/rolledBack/);
    expect(r.stderr).toContain("healthcheck failing");
  });

  it("passes a deployment whose healthcheck succeeds inside the container", async () => {
    const r = await apply(
      desired({
        web: {
          ...web("well"),
          image,
          healthcheck: { exec: ["/bin/sh", "-c", "test -d /data && hostname"], intervalMs: 200, retries: 2 },
        },
      }),
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/web\s+running\s+healthy/);
  });

  it.each([
    ["invalid JSON", "{ not json", /not valid JSON/],
    [
      "a wrong field type",
      JSON.stringify({ apiVersion: "fleetlet/v1", deployment: "x", generation: "99", services: {} }),
      /generation:/,
    ],
    [
      "an unknown strategy",
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: "x",
        generation: 99,
        services: {},
        update: { strategy: "yolo" },
      }),
      /update\.strategy:/,
    ],
  ])("rejects %s, naming the field, and leaves the running containers alone", async (_label, text, why) => {
    const container = webContainer();
    const pid = pidOf(container);
    const file = join(work, `bad-${Math.random()}.json`);
    writeFileSync(file, text);
    const r = await apply(file);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(why);
    expect(r.stderr).toContain("E_INVALID_DESIRED");
    expect(webContainer()).toBe(container);
    expect(pidOf(container)).toBe(pid);
  });

  it("ignores a document whose generation is older than the applied one", async () => {
    const container = webContainer();
    const file = join(work, "stale.json");
    writeFileSync(file, JSON.stringify({ apiVersion: "fleetlet/v1", deployment: "old", generation: 1, services: {} }));
    const r = await apply(file);
    expect(r.stdout).toContain("not newer than the applied one");
    expect(webContainer()).toBe(container);
  });

  it.each([
    ["start-then-stop", ["started", "stopped"]],
    ["stop-then-download", ["stopped", "started"]],
  ])("orders the swap for %s", async (strategy, order) => {
    const r = await apply(
      desired({ web: { ...web(strategy), image } }, { update: { strategy, healthyWithinMs: 4000 } }),
    );
    expect(r.status, r.stderr).toBe(0);
    const events = r.stderr
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l).type as string)
      .filter((t) => t === "started" || t === "stopped");
    expect(events).toEqual(order);
    expect(fleetlet(root, ["logs", "web"]).stdout).toBe(`GREETING=${strategy}\n`);
    expect(fleetlet(root, ["ps"]).stdout.match(/^web\./gm)?.length).toBe(1);
  });

  it.each([
    ["download-then-swap", ["pulling", "stopped"]],
    ["stop-then-download", ["stopped", "pulling"]],
  ])("under %s, orders the download and the stop of the old container", async (strategy, order) => {
    const ref = `${reg.host}/apply/busybox:${strategy}`;
    expect(fleetctl(["--config", config, "push", "--env", `S=${strategy}`, rootfs, ref]).status).toBe(0);
    const r = await apply(
      desired({ web: { ...web(strategy), image: ref } }, { update: { strategy, healthyWithinMs: 4000 } }),
    );
    expect(r.status, r.stderr).toBe(0);
    const events = r.stderr
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { type: string; image?: string });
    expect(
      events.filter((e) => (e.type === "pulling" && e.image === ref) || e.type === "stopped").map((e) => e.type),
    ).toEqual(order);
  });

  it("stops and removes services that are no longer desired", async () => {
    const r = await apply(desired({ other: { image, command: ["sleep", "1000"] } }));
    expect(r.status, r.stderr).toBe(0);
    expect(db().services.web).toBeUndefined();
    expect(fleetlet(root, ["ps"]).stdout).not.toMatch(/^web\./m);
    expect(fleetlet(root, ["ps"]).stdout).toMatch(/^other\./m);
  });
});
