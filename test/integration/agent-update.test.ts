/**
 * The agent updates itself through the fleet, with real release bundles: v1
 * installed by its install.sh under a temporary prefix and run as the unit
 * runs it (a small supervisor here plays systemd's Restart=always), a real
 * broker and registry, one running container. A document naming agent v2
 * is committed; v3, broken (it exits at start), is reverted to v2 by the
 * launcher and reported `rolledBack`; v4 is committed although the agent is
 * killed with SIGKILL while it downloads and again after the switch, before
 * it commits; v5, which cannot reach the broker (it is down), reverts
 * itself to v4 at the end of its window. The container's pid never changes.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  existsSync,
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
import { fleetctl } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import {
  BUILD_TIMEOUT_MS,
  deviceToolsDir,
  rebrandBundle,
  releaseBundle,
  unpackBundle,
  VERSION,
} from "../support/release-bundle.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const DEVICE = "dev-agent-update";
const COMMIT_WITHIN_MS = 4000;
const rootfs = inject("busyboxRootfs");
const work = mkdtempSync(join(tmpdir(), "fleetlet-agent-update-"));
const [prefix, etc, units] = [join(work, "opt/fleetlet"), join(work, "etc/fleetlet"), join(work, "units")];
const version = (n: number) => VERSION.replace(/\d+$/, String(n));
const [V2, V3, V4, V5] = [version(2), version(3), version(4), version(5)];
let reg: RegistryFixture;
let broker: MosquittoFixture;
let root: string;
let device: NodeJS.ProcessEnv;
let operator: mqtt.MqttClient;
let configFile: string;
const images: Record<string, string> = {};
const reports: ReportedState[] = [];
const updateEvents: { stage: string; from?: string; to?: string }[] = [];
let generation = 0;

/** systemd's part: runs the unit's ExecStart, and again 300 ms after each exit, until stopped. */
const supervisor = {
  child: undefined as ChildProcess | undefined,
  log: "",
  starts: 0,
  stopped: false,
  start() {
    const child = spawn(
      join(prefix, "current/bin/fleetlet"),
      ["agent", "--config", configFile, "--root", root, "--heartbeat", "1"],
      { env: device, stdio: ["ignore", "ignore", "pipe"] },
    );
    this.child = child;
    this.starts++;
    child.stderr!.on("data", (d) => {
      this.log += d;
    });
    child.once("exit", () => {
      if (!this.stopped) setTimeout(() => this.start(), 300);
    });
  },
  get pid() {
    return this.child!.pid!;
  },
};

const latest = () => reports.at(-1);
const waitOpts = (timeoutMs = 120_000): WaitForOptions => ({
  timeoutMs,
  intervalMs: 100,
  context: () => `last report: ${JSON.stringify(latest())}; agent stderr: ${supervisor.log.slice(-3000)}`,
});
const currentVersion = () => readlinkSync(join(prefix, "current")).replace(/^versions\//, "");
const updateState = () => {
  const path = join(prefix, "agent-update");
  return existsSync(path) ? readFileSync(path, "utf8") : undefined;
};
const webPid = () => latest()?.services.web?.pid;
const isSleep = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("sleep\0");

function publish(agent?: string): number {
  generation++;
  operator.publish(
    `fleet/devices/${DEVICE}/desired`,
    JSON.stringify({
      apiVersion: "fleetlet/v1",
      deployment: "update-test",
      generation,
      services: { web: { image: images.web, command: ["/bin/sh", "-c", "exec sleep 100000"], stopTimeoutMs: 300 } },
      ...(agent ? { agent: { version: agent, image: images[agent] } } : {}),
    }),
    { qos: 1, retain: true },
  );
  return performance.now();
}

async function committed(v: string, gen: number): Promise<ReportedState> {
  return waitFor(
    `agent ${v} committed, reporting generation ${gen}`,
    () => {
      const r = latest();
      return r?.agent.version === v && r.generation === gen && r.phase === "converged" && updateState() === undefined
        ? r
        : undefined;
    },
    waitOpts(),
  );
}

beforeAll(async () => {
  const [tarball, registry, mosquitto] = await Promise.all([
    releaseBundle(inject("releaseDir"), "x64"),
    startRegistry({ auth: "htpasswd" }),
    startMosquitto(),
  ]);
  [reg, broker] = [registry, mosquitto];
  for (const d of ["unpacked", "bundles"]) mkdirSync(join(work, d));
  const bundle = await unpackBundle(tarball, join(work, "unpacked"));
  const bundles = join(work, "bundles");
  const tarballs = {
    [V2]: await rebrandBundle(bundle, bundles, V2),
    [V3]: await rebrandBundle(bundle, bundles, V3, { broken: true }),
    [V4]: await rebrandBundle(bundle, bundles, V4),
    [V5]: await rebrandBundle(bundle, bundles, V5),
  };
  device = { PATH: deviceToolsDir(join(work, "device-bin")) };
  const r = spawnSync(join(bundle, "install.sh"), ["--prefix", prefix, "--config-dir", etc, "--unit-dir", units], {
    env: device,
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`install.sh failed: ${r.stderr}`);
  configFile = join(etc, "config.json");
  writeFileSync(
    configFile,
    JSON.stringify({
      deviceId: DEVICE,
      mqtt: { url: broker.url, insecure: true },
      registries: registriesConfig(reg),
      api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, "api.sock") },
      agentUpdate: { commitWithinMs: COMMIT_WITHIN_MS },
    }),
  );
  const push = fleetctl(["--config", configFile, "push", rootfs, `${reg.host}/update/busybox:1`]);
  if (push.status !== 0) throw new Error(`push: ${push.stderr}`);
  images.web = push.stdout.trim();
  for (const [v, file] of Object.entries(tarballs)) {
    const p = fleetctl(["--config", configFile, "push-agent", file, `${reg.host}/fleetlet/agent:${v}`]);
    if (p.status !== 0) throw new Error(`push-agent ${v}: ${p.stderr}`);
    images[v] = `${reg.host}/fleetlet/agent@${p.stdout.trim().split("@")[1]}`;
  }
  root = freshRoot();
  operator = mqtt.connect(broker.url, { clientId: "operator-agent-update" });
  await new Promise((resolve) => operator.once("connect", resolve));
  await operator.subscribeAsync([`fleet/devices/${DEVICE}/reported`, `fleet/devices/${DEVICE}/events`], { qos: 1 });
  operator.on("message", (topic, payload) => {
    if (!payload.length) return;
    const doc = JSON.parse(payload.toString());
    if (topic.endsWith("/reported")) reports.push(doc);
    else if (doc.type === "agentUpdate") updateEvents.push(doc);
  });
}, BUILD_TIMEOUT_MS);

afterAll(async () => {
  supervisor.stopped = true;
  supervisor.child?.kill("SIGKILL");
  operator?.end(true);
  if (root) await cleanupRoot(root);
  await Promise.all([reg?.stop(), broker?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

describe("agent self-update through the fleet", () => {
  let pid: number;

  it("runs v1 with one container", async () => {
    supervisor.start();
    publish();
    const r = await waitFor(
      "converged generation 1",
      () => (latest()?.phase === "converged" && latest()?.generation === 1 ? latest() : undefined),
      waitOpts(),
    );
    expect(r.agent.version).toBe(VERSION);
    pid = webPid()!;
    // Running is reported once its shell runs; the shell then execs sleep.
    await waitFor("the service's shell to exec sleep", () => isSleep(pid));
  }, 180_000);

  it("commits v2 in the same process, the container untouched", async () => {
    const agentPid = supervisor.pid;
    const t0 = publish(V2);
    const r = await committed(V2, 2);
    const ms = performance.now() - t0;
    expect(r.services.web?.pid).toBe(pid);
    expect(isSleep(pid)).toBe(true);
    // Same pid (Type=notify holds), now on v2's Node; v1 is `previous`.
    expect(supervisor.pid).toBe(agentPid);
    expect(supervisor.starts).toBe(1);
    expect(readlinkSync(`/proc/${agentPid}/exe`)).toBe(join(prefix, "versions", V2, "node/bin/node"));
    expect([currentVersion(), readlinkSync(join(prefix, "previous"))]).toEqual([V2, `versions/${VERSION}`]);
    const detached = Date.parse(/detached from the containers at (\S+)/.exec(supervisor.log)![1]!);
    const adopted = Date.parse(/on trial \(start 1\); containers adopted at (\S+)/.exec(supervisor.log)![1]!);
    console.log(
      `agent update v1 → v2: publish to committed ${(ms / 1000).toFixed(1)} s (commitWithinMs ${COMMIT_WITHIN_MS}); containers unsupervised for ${adopted - detached} ms`,
    );
    expect(adopted).toBeGreaterThanOrEqual(detached);
    await waitFor("the committed event", () => updateEvents.some((e) => e.stage === "committed"), waitOpts());
    expect(updateEvents.filter((e) => e.stage !== "switching")).toMatchObject([
      { stage: "downloading", from: VERSION, to: V2 },
      { stage: "committed", from: VERSION, to: V2 },
    ]);
  }, 180_000);

  it("reverts broken v3 to v2 by itself, reports rolledBack, and does not try v3 again", async () => {
    publish(V3);
    const r = await waitFor(
      "rolledBack to v2",
      () => {
        const l = latest();
        return l?.generation === 3 && l.phase === "rolledBack" && l.agent.version === V2 ? l : undefined;
      },
      waitOpts(),
    );
    expect(r.lastError?.code).toBe("E_AGENT_UPDATE_FAILED");
    expect(updateEvents).toContainEqual(expect.objectContaining({ stage: "reverted", from: V3, to: V2 }));
    expect(r.lastError?.message).toMatch(new RegExp(`agent ${V3.replaceAll(".", "\\.")} was reverted to .*crash loop`));
    expect(currentVersion()).toBe(V2);
    expect(updateState()).toMatch(/^state=failed$/m);
    expect(r.services.web?.pid).toBe(pid);
    expect(isSleep(pid)).toBe(true);
    // Not tried again: v2 keeps running in the same process, reporting the failure.
    const starts = supervisor.starts;
    await new Promise((resolve) => setTimeout(resolve, 2 * COMMIT_WITHIN_MS));
    expect(supervisor.starts).toBe(starts);
    expect(currentVersion()).toBe(V2);
    expect(latest()).toMatchObject({ phase: "rolledBack", agent: { version: V2 } });
  }, 180_000);

  it("commits v4 although the agent is killed while downloading it and again after the switch", async () => {
    // A download slow enough to be cut (a bundle is some tens of MiB): the config's cap, read by a restarted agent.
    const config = JSON.parse(readFileSync(configFile, "utf8"));
    writeFileSync(configFile, JSON.stringify({ ...config, pull: { maxRateBytesPerSec: "8M" } }));
    const announced = () => supervisor.log.match(/^fleetlet agent \S+: device /gm)?.length ?? 0;
    const before = announced();
    process.kill(supervisor.pid, "SIGKILL");
    await waitFor("the agent restarted with the cap", () => announced() > before, waitOpts());
    publish(V4);
    const ingest = join(root, "ingest");
    await waitFor(
      "a partial download of the v4 bundle",
      () =>
        existsSync(ingest) &&
        readdirSync(ingest).some((f) => {
          try {
            return statSync(join(ingest, f)).size > 1 << 20;
          } catch {
            return false; // committed (renamed into blobs/) between the listing and the stat: looked for again
          }
        }),
      waitOpts(),
    );
    process.kill(supervisor.pid, "SIGKILL");
    await waitFor(
      "v4 switched in and on trial",
      () =>
        currentVersion() === V4 &&
        /^attempts=1$/m.test(updateState() ?? "") &&
        /on trial \(start 1\)/.test(supervisor.log.split(`→ ${V4}`).at(-1)!),
      waitOpts(),
    );
    process.kill(supervisor.pid, "SIGKILL");
    const r = await committed(V4, 4);
    expect(supervisor.log).toMatch(/on trial \(start 2\)/);
    expect(r.services.web?.pid).toBe(pid);
    expect(isSleep(pid)).toBe(true);
    expect(readlinkSync(join(prefix, "previous"))).toBe(`versions/${V2}`);
    // Only current and previous are kept once v4 is committed: v1 and the broken v3 are gone.
    expect(readdirSync(join(prefix, "versions")).sort()).toEqual([V2, V4]);
  }, 240_000);

  it("reverts v5 by itself when it cannot reach the broker within its window", async () => {
    const config = JSON.parse(readFileSync(configFile, "utf8"));
    writeFileSync(configFile, JSON.stringify({ ...config, pull: {} }));
    publish(V5);
    // The broker goes down as v5 starts (its first start counted), after v4 handed over.
    await waitFor(
      "v5 switched in",
      () => /^attempts=1$/m.test(updateState() ?? "") && currentVersion() === V5,
      waitOpts(),
    );
    broker.kill9();
    await waitFor(
      "v5 reverted to v4",
      () => currentVersion() === V4 && /^state=failed$/m.test(updateState() ?? ""),
      waitOpts(),
    );
    expect(updateState()).toMatch(/^reason=it was not connected to the broker within agentUpdate\.commitWithinMs$/m);
    await broker.restart();
    const r = await waitFor(
      "v4 reporting rolledBack",
      () => {
        const l = latest();
        return l?.generation === 5 && l.phase === "rolledBack" && l.agent.version === V4 ? l : undefined;
      },
      waitOpts(),
    );
    expect(r.lastError).toMatchObject({
      code: "E_AGENT_UPDATE_FAILED",
      message: expect.stringContaining("not connected"),
    });
    expect(r.services.web?.pid).toBe(pid);
    expect(isSleep(pid)).toBe(true);
  }, 240_000);
});
