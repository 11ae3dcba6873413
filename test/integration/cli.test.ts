/**
 * The command lines a user types: global options after the command word,
 * `run IMAGE -- CMD`, `--version`, and a rollout to a group no device is in.
 * The real CLIs against the real kernel, a real registry and a real broker,
 * with one real agent in the group "pilot".
 */
import type { ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectAsync } from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { runCli, spawnAgent } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
const VERSION = (JSON.parse(readFileSync("package.json", "utf8")) as { version: string }).version;
let reg: RegistryFixture;
let broker: MosquittoFixture;
let work: string;
let config: string;
let image: string;
let agent: ChildProcess;
const roots: string[] = [];

const fleetlet = (...args: string[]) => runCli("fleetlet", args);
const fleetctl = (...args: string[]) => runCli("fleetctl", args);

function root(): string {
  const r = freshRoot();
  roots.push(r);
  return r;
}

/** The topics under `filter` that hold a retained message, as a new subscriber finds them. */
async function retainedUnder(filter: string): Promise<string[]> {
  const client = await connectAsync(broker.url);
  try {
    const fence = `test/fence/${randomUUID()}`;
    const topics: string[] = [];
    const fenced = new Promise<void>((resolve) =>
      client.on("message", (topic, payload, packet) => {
        if (topic === fence) resolve();
        else if (packet.retain && payload.length) topics.push(topic);
      }),
    );
    await client.subscribeAsync([filter, fence], { qos: 1 });
    // Retained messages come right after the SUBACK, so before this echo.
    await client.publishAsync(fence, "x", { qos: 1 });
    await fenced;
    return topics.sort();
  } finally {
    await client.endAsync();
  }
}

function documentFile(deployment: string): string {
  const file = join(work, `${deployment}.json`);
  writeFileSync(file, JSON.stringify({ apiVersion: "fleetlet/v1", deployment, services: {} }));
  return file;
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-cli-"));
  [reg, broker] = await Promise.all([startRegistry({ auth: "htpasswd" }), startMosquitto()]);
  const registries = registriesConfig(reg);
  config = join(work, "config.json");
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: "dev-cli",
      groups: ["pilot"],
      mqtt: { url: broker.url, insecure: true },
      registries,
      api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, "api.sock") },
    }),
  );
  image = `${reg.host}/cli/busybox:1`;
  // fleetctl push with its --config after the command word: the registry's credentials come from it.
  const pushed = await fleetctl(
    ...["push", "--cmd", "/bin/sh", "--cmd", "-c", "--cmd", "echo image-default"],
    ...["--config", config, rootfs, image],
  );
  expect(pushed.status, pushed.stderr).toBe(0);
  agent = spawnAgent(root(), config);
  await waitFor(
    "the agent dev-cli's first report",
    async () => (await retainedUnder("fleet/devices/dev-cli/reported")).length > 0,
    { timeoutMs: 30_000, intervalMs: 100 },
  );
});

afterAll(async () => {
  if (agent && agent.exitCode === null && agent.signalCode === null) {
    const exited = new Promise((r) => agent.once("exit", r));
    agent.kill("SIGTERM");
    await exited;
  }
  for (const r of roots) await cleanupRoot(r);
  await Promise.all([reg?.stop(), broker?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

describe("global options after the command word", () => {
  it("fleetlet run takes --root among its own options, and ps and rm find the container there", async () => {
    const state = root();
    const run = await fleetlet(
      "run",
      "-d",
      "--name",
      "cli-c1",
      "--rootfs",
      rootfs,
      "--root",
      state,
      "--",
      "/bin/sleep",
      "100",
    );
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toBe("cli-c1\n");
    expect((await fleetlet("ps", "--root", state)).stdout).toMatch(/^cli-c1\s+Up since/m);
    expect((await fleetlet("ps", "--root", root())).stdout).not.toContain("cli-c1");
    const rm = await fleetlet("rm", "-f", "cli-c1", `--root=${state}`);
    expect([rm.status, rm.stdout]).toEqual([0, "cli-c1\n"]);
    expect((await fleetlet("--root", state, "ps", "-a")).stdout).not.toContain("cli-c1");
  });

  it("leaves a --root after -- to the container's command", async () => {
    const r = await fleetlet(
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      "--root",
      root(),
      "--",
      "/bin/echo",
      "hi",
      "--root",
      "x",
    );
    expect(r.stderr).toBe("");
    expect([r.status, r.stdout]).toEqual([0, "hi --root x\n"]);
  });

  it("fleetlet pull and images take --root and --config after the command word", async () => {
    const state = root();
    const pull = await fleetlet("pull", "--quiet", "--root", state, "--config", config, image);
    expect(pull.status, pull.stderr).toBe(0);
    expect((await fleetlet("images", "--root", state)).stdout).toContain(image);
    expect((await fleetlet("images", `--root=${root()}`)).stdout).not.toContain(image);
  });

  it("fleetctl status and deploy take --config after the command word", async () => {
    const status = await fleetctl("status", "--group", "pilot", "--config", config);
    expect(status.status, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/^1 device\(s\) in group pilot, 1 online$/m);
    expect(status.stdout).toMatch(/^dev-cli\s+yes/m);
    const deploy = await fleetctl("deploy", "--device", "dev-away", documentFile("cli-deploy"), `--config=${config}`);
    expect(deploy.status, deploy.stderr).toBe(0);
    expect(deploy.stdout).toMatch(/^published deployment cli-deploy generation 1 to fleet\/devices\/dev-away\/desired/);
    expect(await retainedUnder("fleet/devices/dev-away/#")).toEqual(["fleet/devices/dev-away/desired"]);
  });
});

describe("fleetlet run's command", () => {
  it("runs the command given after IMAGE --", async () => {
    const r = await fleetlet(
      "run",
      "--rm",
      "--root",
      root(),
      "--config",
      config,
      image,
      "--",
      "/bin/echo",
      "after-dashes",
    );
    expect(r.stderr).not.toMatch(/fleetlet:/);
    expect([r.status, r.stdout]).toEqual([0, "after-dashes\n"]);
  });

  it("runs the command given right after IMAGE, and the image's own without one", async () => {
    const state = root();
    const given = await fleetlet("run", "--rm", "--root", state, "--config", config, image, "/bin/echo", "right-after");
    expect([given.status, given.stdout]).toEqual([0, "right-after\n"]);
    const own = await fleetlet("run", "--rm", "--root", state, "--config", config, image);
    expect([own.status, own.stdout]).toEqual([0, "image-default\n"]);
  });

  it("runs the command after --rootfs DIR --, or right after --rootfs DIR", async () => {
    const dashed = await fleetlet("run", "--rm", "--rootfs", rootfs, "--root", root(), "--", "/bin/echo", "a");
    expect([dashed.status, dashed.stdout]).toEqual([0, "a\n"]);
    const plain = await fleetlet("run", "--rm", "--rootfs", rootfs, "--root", root(), "/bin/echo", "b");
    expect([plain.status, plain.stdout]).toEqual([0, "b\n"]);
  });
});

describe("--version", () => {
  it.each(["fleetlet", "fleetctl"] as const)("%s prints the package's version and exits 0", async (bin) => {
    expect(await runCli(bin, ["--version"])).toEqual({ status: 0, stdout: `${bin} ${VERSION}\n`, stderr: "" });
  });
});

describe("fleetctl rollout to a group no device is in", () => {
  it("refuses a misspelled group with E_EMPTY_GROUP, naming it, before publishing anything", async () => {
    const r = await fleetctl(
      "--config",
      config,
      "rollout",
      "--group",
      "pilto",
      documentFile("cli-typo"),
      "--waves",
      "50,100",
    );
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/group pilto has no known device.*--allow-empty.*\[E_EMPTY_GROUP\]/);
    expect(r.stdout).toBe("");
    expect(await retainedUnder("fleet/groups/pilto/#")).toEqual([]);
  });

  it("rolls out with --allow-empty, for devices that join the group later", async () => {
    const r = await fleetctl(
      ...["rollout", "--group", "later", documentFile("cli-later"), "--waves", "50,100", "--allow-empty"],
      ...["--config", config],
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^rollout of cli-later \(generation 1\) to group later: done, wave 2\/2/);
    expect(await retainedUnder("fleet/groups/later/#")).toEqual([
      "fleet/groups/later/desired",
      "fleet/groups/later/rollout",
    ]);
  });
});
