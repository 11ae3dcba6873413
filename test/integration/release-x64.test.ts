/**
 * The x64 release bundle as a user installs and runs it: unpacked, installed
 * with its install.sh under a temporary prefix, and the agent started as the
 * installed unit's ExecStart says, on a PATH with no node, npm or compiler,
 * against the real broker and registry, converging on a deployment with a
 * real container.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { ReportedState } from "../../schemas/reported.js";
import { freePort } from "../support/free-port.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { BUILD_TIMEOUT_MS, deviceToolsDir, releaseBundle, unpackBundle, VERSION } from "../support/release-bundle.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const DEVICE = "dev-bundle-x64";
const rootfs = inject("busyboxRootfs");
const work = mkdtempSync(join(tmpdir(), "fleetlet-release-x64-"));
const [prefix, etc, units] = [join(work, "opt/fleetlet"), join(work, "etc/fleetlet"), join(work, "units")];
let reg: RegistryFixture;
let broker: MosquittoFixture;
let root: string;
let device: NodeJS.ProcessEnv;
let operator: mqtt.MqttClient;
let agent: ChildProcess | undefined;
let agentLog = "";
const reports: ReportedState[] = [];

const latest = () => reports.at(-1);
const reportWait = (timeoutMs = 60_000): WaitForOptions => ({
  timeoutMs,
  intervalMs: 100,
  context: () => `last report: ${JSON.stringify(latest())}; agent stderr: ${agentLog.slice(-2000)}`,
});

function onDevice(cmd: string, args: string[]) {
  const r = spawnSync(cmd, args, { encoding: "utf8", env: device, timeout: 120_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(async () => {
  const [tarball, registry, mosquitto] = await Promise.all([
    releaseBundle(inject("releaseDir"), "x64"),
    startRegistry({ auth: "htpasswd" }),
    startMosquitto(),
  ]);
  [reg, broker] = [registry, mosquitto];
  mkdirSync(join(work, "unpacked"));
  const bundle = await unpackBundle(tarball, join(work, "unpacked"));
  device = { PATH: deviceToolsDir(join(work, "device-bin")) };
  const r = onDevice(join(bundle, "install.sh"), ["--prefix", prefix, "--config-dir", etc, "--unit-dir", units]);
  if (r.status !== 0) throw new Error(`install.sh failed: ${r.stderr}`);
  root = freshRoot();
  operator = mqtt.connect(broker.url, { clientId: "operator-release-x64" });
  await new Promise((resolve) => operator.once("connect", resolve));
  await operator.subscribeAsync(`fleet/devices/${DEVICE}/reported`, { qos: 1 });
  operator.on("message", (_topic, payload) => {
    if (payload.length) reports.push(JSON.parse(payload.toString()));
  });
}, BUILD_TIMEOUT_MS);

afterAll(async () => {
  if (agent && agent.exitCode === null && agent.signalCode === null) agent.kill("SIGKILL");
  operator?.end(true);
  if (root) await cleanupRoot(root);
  await Promise.all([reg?.stop(), broker?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

describe("the installed x64 bundle", () => {
  it("has no node, npm or compiler to lean on: the device's PATH holds none", () => {
    for (const tool of ["node", "nodejs", "npm", "npx", "gcc", "cc", "g++", "make"]) {
      expect(onDevice("/bin/sh", ["-c", `command -v ${tool}`]).status, tool).not.toBe(0);
    }
  });

  it("runs the agent as the installed unit's ExecStart says, which converges a deployment with a real container", async () => {
    // The operator's side: the installed fleetctl pushes the image, with the same config as the device.
    writeFileSync(
      join(etc, "config.json"),
      JSON.stringify({
        deviceId: DEVICE,
        mqtt: { url: broker.url, insecure: true },
        registries: registriesConfig(reg),
        api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, "api.sock") },
      }),
    );
    const image = `${reg.host}/bundle/busybox:1`;
    const push = onDevice(join(prefix, "current/bin/fleetctl"), [
      "--config",
      join(etc, "config.json"),
      "push",
      rootfs,
      image,
    ]);
    expect(push.status, push.stderr).toBe(0);

    const unit = readFileSync(join(units, "fleetlet.service"), "utf8");
    const [program, ...args] = /^ExecStart=(.*)$/m.exec(unit)![1]!.split(/\s+/);
    expect([program, ...args]).toEqual([`${prefix}/current/bin/fleetlet`, "agent", "--config", `${etc}/config.json`]);
    // The state goes to a temporary root; a global option after the command word, as the unit's arguments end.
    agent = spawn(program!, [...args, "--root", root, "--heartbeat", "2"], {
      env: device,
      stdio: ["ignore", "ignore", "pipe"],
    });
    agent.stderr!.on("data", (d) => {
      agentLog += d;
    });
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      agent!.once("exit", (code, signal) => resolve([code, signal])),
    );

    operator.publish(
      `fleet/devices/${DEVICE}/desired`,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: "bundle-1",
        generation: 1,
        services: { web: { image, command: ["/bin/sh", "-c", "echo up; exec sleep 1000"], stopTimeoutMs: 300 } },
      }),
      { qos: 1, retain: true },
    );
    const r = await waitFor(
      "converged generation 1",
      () => (latest()?.phase === "converged" && latest()?.generation === 1 ? latest() : undefined),
      reportWait(),
    );
    expect(r.agent.version).toBe(VERSION);
    expect(r.services.web).toMatchObject({ image, state: "running", restarts: 0 });
    const pid = r.services.web!.pid!;
    // Running is reported once its shell runs; the shell then execs sleep.
    const cmdline = () => readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    await waitFor("the service's shell to exec sleep", () => cmdline()[0] === "sleep");
    expect(cmdline()).toEqual(["sleep", "1000", ""]);
    // The agent runs on the bundle's Node, from the version `current` named, under its memory flags.
    expect(readlinkSync(`/proc/${agent.pid}/exe`)).toBe(join(prefix, "versions", VERSION, "node/bin/node"));
    expect(readFileSync(`/proc/${agent.pid}/cmdline`, "utf8").split("\0")).toEqual(
      expect.arrayContaining(["--max-semi-space-size=1", join(prefix, "versions", VERSION, "lib/fleetlet.js")]),
    );
    // A one-shot command runs under the launcher's Node flags too (fleetctl's watch, as it waits).
    const watch = spawn(
      join(prefix, "current/bin/fleetctl"),
      ["--config", join(etc, "config.json"), "status", "--watch"],
      {
        env: device,
        stdio: ["ignore", "pipe", "ignore"],
      },
    );
    try {
      await new Promise((resolve) => watch.stdout!.once("data", resolve));
      expect(readFileSync(`/proc/${watch.pid}/cmdline`, "utf8").split("\0")).toEqual(
        expect.arrayContaining([
          "--max-semi-space-size=1",
          "--v8-pool-size=1",
          join(prefix, "versions", VERSION, "lib/fleetctl.js"),
        ]),
      );
    } finally {
      watch.kill("SIGKILL");
    }
    // Its pull worker started with the root's compile cache on, and wrote the code it compiled there.
    const cache = join(root, "compile-cache");
    expect(statSync(cache).mode & 0o777).toBe(0o700);
    expect(
      readdirSync(cache, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).length,
    ).toBeGreaterThan(0);

    agent.kill("SIGTERM");
    expect(await exited, agentLog).toEqual([0, null]);
    // KillMode=process in the unit relies on this: the container outlives the agent.
    expect(readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0]).toBe("sleep");
  });
});
