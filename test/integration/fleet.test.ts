/**
 * Staged rollouts end to end: three real agents (real containers) in one
 * group behind a real mosquitto with TLS and client certificates, driven by
 * the real `fleetctl` as an operator would, with signed documents.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createPrivateKey } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { signDocument } from "../../agent/protocol/signature.js";
import { inRolloutWave } from "../../agent/protocol/waves.js";
import type { ReportedState } from "../../schemas/reported.js";
import { FLEETCTL_BIN, runCli, spawnAgent } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { startMosquitto } from "../support/mosquitto.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
const DEVICES = ["dev-f1", "dev-f2", "dev-f3"];
const GROUP = "pilot";
let reg: RegistryFixture;
let broker: Awaited<ReturnType<typeof startMosquitto>>;
let work: string;
let opConfig: string;
let image: string;
let keyFile: string;
let watcher: mqtt.MqttClient;
const roots = new Map<string, string>();
const configs = new Map<string, string>();
const agents = new Map<string, ChildProcess>();
/** Every reported state seen, in arrival order. */
const seen: ReportedState[] = [];
const latest = (id: string) => seen.findLast((r) => r.deviceId === id);

const API_TOKEN = "fleet-test-token";

/** POST /v1/services/web/restart on the device's status socket; resolves with the status code. */
function restartWeb(id: string): Promise<number | undefined> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath: join(work, `${id}.sock`),
        path: "/v1/services/web/restart",
        method: "POST",
        headers: { authorization: `Bearer ${API_TOKEN}` },
      },
      (res) => {
        res.resume();
        res.once("end", () => resolve(res.statusCode));
      },
    );
    req.once("error", reject);
    req.end();
  });
}

function startAgent(id: string): void {
  agents.set(id, spawnAgent(roots.get(id)!, configs.get(id)!));
}

async function stopAgent(id: string): Promise<void> {
  const p = agents.get(id)!;
  const exit = new Promise((r) => p.once("exit", r));
  p.kill("SIGTERM");
  await exit;
}

/** How the tests wait on the devices: a timeout shows each one's latest report. */
const reportWait = (timeoutMs = 40_000): WaitForOptions => ({
  timeoutMs,
  intervalMs: 100,
  context: () => `latest: ${JSON.stringify(DEVICES.map(latest))}`,
});

/** A deployment name whose 34% wave holds exactly `inWave` of the three devices. */
function deploymentFor(base: string, inWave: string): string {
  for (let i = 0; ; i++) {
    const name = `${base}.${i}`;
    if (DEVICES.every((d) => inRolloutWave(d, name, 34) === (d === inWave))) return name;
  }
}

function docFile(name: string, deployment: string, command: string): string {
  const file = join(work, `${name}.json`);
  writeFileSync(
    file,
    JSON.stringify({
      apiVersion: "fleetlet/v1",
      deployment,
      services: { web: { image, command: ["/bin/sh", "-c", command], restart: "never", stopTimeoutMs: 300 } },
      update: { healthyWithinMs: 1500 },
    }),
  );
  return file;
}

const fleetctl = (args: string[]) => runCli("fleetctl", ["--config", opConfig, ...args]);
const pidOf = (id: string) => latest(id)?.services.web?.pid;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-fleet-"));
  // The broker enforces the ACL that `fleetctl acl` makes from the inventory.
  const inventory = join(work, "inventory.json");
  writeFileSync(
    inventory,
    JSON.stringify({
      devices: Object.fromEntries(DEVICES.map((d) => [d, [GROUP]])),
      operators: ["operator", "watcher"],
    }),
  );
  const acl = await runCli("fleetctl", ["acl", inventory]);
  expect(acl.status, acl.stderr).toBe(0);
  writeFileSync(join(work, "acl"), acl.stdout);
  [reg, broker] = await Promise.all([
    startRegistry({ auth: "htpasswd" }),
    startMosquitto({ clientCerts: true, aclFile: join(work, "acl") }),
  ]);
  keyFile = join(work, "ops.key");
  const keygen = await runCli("fleetctl", ["keygen", keyFile]);
  expect(keygen.status, keygen.stderr).toBe(0);
  const pub = keygen.stdout.trim();
  const registries = registriesConfig(reg);
  const op = broker.clientCert("operator");
  opConfig = join(work, "operator.json");
  writeFileSync(opConfig, JSON.stringify({ mqtt: { url: broker.url, ca: broker.caFile, ...op }, registries }));
  image = `${reg.host}/fleet/busybox:1`;
  const push = await fleetctl(["push", rootfs, image]);
  expect(push.status, push.stderr).toBe(0);
  for (const id of DEVICES) {
    roots.set(id, freshRoot());
    const config = join(work, `${id}.json`);
    const port = await freePort();
    writeFileSync(
      config,
      JSON.stringify({
        deviceId: id,
        groups: [GROUP],
        mqtt: { url: broker.url, ca: broker.caFile, ...broker.clientCert(id) },
        registries,
        api: { listen: `127.0.0.1:${port}`, socket: join(work, `${id}.sock`), token: API_TOKEN },
        trustedKeys: [pub],
      }),
    );
    configs.set(id, config);
  }
  watcher = mqtt.connect(broker.url, {
    ca: readFileSync(broker.caFile),
    ...(() => {
      const c = broker.clientCert("watcher");
      return { cert: readFileSync(c.cert), key: readFileSync(c.key) };
    })(),
  });
  await new Promise((r) => watcher.once("connect", r));
  await watcher.subscribeAsync("fleet/devices/+/reported", { qos: 1 });
  watcher.on("message", (_t, payload) => {
    if (payload.length) seen.push(JSON.parse(payload.toString()));
  });
  for (const id of DEVICES) startAgent(id);
  await waitFor("all agents online", () => (DEVICES.every((d) => latest(d)) ? true : undefined), reportWait());
});

afterAll(async () => {
  for (const p of agents.values()) p.kill("SIGTERM");
  await Promise.all(
    [...agents.values()].map((p) =>
      p.exitCode === null && p.signalCode === null ? new Promise((r) => p.once("exit", r)) : undefined,
    ),
  );
  watcher?.end(true);
  for (const root of roots.values()) await cleanupRoot(root);
  await Promise.all([reg?.stop(), broker?.stop()]);
});

describe("fleetctl rollout", () => {
  let good1: string;

  it("rolls a deployment out in waves 34,100: the wave goes first, all converge, and fleetctl status shows it", async () => {
    good1 = deploymentFor("good-1", "dev-f2");
    const r = await fleetctl([
      "rollout",
      "--group",
      GROUP,
      docFile("good1", good1, "exec sleep 1000"),
      "--waves",
      "34,100",
      "--healthy-within",
      "60s",
      "--max-failures",
      "0",
      "--sign-key",
      keyFile,
    ]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`rollout of ${good1} .*: done, wave 2/2`));
    expect(r.stderr).toMatch(/wave 1\/2 \(34%\): 1 device\(s\): 1 healthy/);
    expect(r.stderr).toMatch(/wave 2\/2 \(100%\): 3 device\(s\): 3 healthy/);
    // The device in the first wave was healthy before the others even started pulling.
    const firstHealthy = seen.findIndex((s) => s.deviceId === "dev-f2" && s.lastGood === good1);
    const othersStarted = seen.findIndex((s) => s.deviceId !== "dev-f2" && s.deployment === good1);
    expect(firstHealthy).toBeGreaterThanOrEqual(0);
    expect(othersStarted).toBeGreaterThan(firstHealthy);
    for (const id of DEVICES)
      expect(latest(id)).toMatchObject({ deployment: good1, phase: "converged", lastGood: good1, groups: [GROUP] });

    const status = await fleetctl(["status", "--group", GROUP]);
    expect(status.status, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/3 device\(s\) in group pilot, 3 online/);
    expect(status.stdout).toMatch(new RegExp(`rollout of ${good1} .*: done`));
    for (const id of DEVICES)
      expect(status.stdout).toMatch(
        new RegExp(`^${id}\\s+yes\\s+${good1.replace(/\./g, "\\.")}\\s+\\d+\\s+converged`, "m"),
      );
    const json = JSON.parse((await fleetctl(["status", "--group", GROUP, "--json"])).stdout) as {
      deviceId: string;
      online: boolean;
    }[];
    expect(json.map((d) => [d.deviceId, d.online])).toEqual(DEVICES.map((d) => [d, true]));
  });

  it("halts a broken deployment after the first wave: that wave rolls back, the others are untouched", async () => {
    const broken = deploymentFor("broken", "dev-f1");
    const before = new Map(DEVICES.map((d) => [d, { pid: pidOf(d), generation: latest(d)!.generation }]));
    const r = await fleetctl([
      "rollout",
      "--group",
      GROUP,
      docFile("broken", broken, "exit 3"),
      "--waves",
      "34,100",
      "--healthy-within",
      "30s",
      "--max-failures",
      "10%",
      "--sign-key",
      keyFile,
    ]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("E_ROLLOUT_HALTED");
    expect(r.stdout).toMatch(/halted, wave 1\/2 \(34%\)/);
    expect(r.stdout).toMatch(/dev-f1: (failed|rolledBack): /);
    // The wave's device restores good1 (its own health gate already had; the operator's rollback confirms it).
    const back = await waitFor(
      "dev-f1 rolled back by the operator",
      () => {
        const s = latest("dev-f1");
        return s?.phase === "rolledBack" && s.deployment === good1 && s.services.web?.state === "running"
          ? s
          : undefined;
      },
      reportWait(),
    );
    expect(back.lastError?.code).toBe("E_ROLLED_BACK");
    for (const id of ["dev-f2", "dev-f3"]) {
      expect(latest(id)).toMatchObject({
        deployment: good1,
        phase: "converged",
        generation: before.get(id)!.generation,
      });
      expect(pidOf(id), JSON.stringify(latest(id))).toBe(before.get(id)!.pid);
    }
  });

  it("resumes an interrupted rollout from its retained progress after fleetctl is killed", async () => {
    const good2 = deploymentFor("good-2", "dev-f3");
    const file = join(work, "good2.json");
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: good2,
        services: { web: { image, command: ["/bin/sh", "-c", "exec sleep 1001"], stopTimeoutMs: 300 } },
        update: { healthyWithinMs: 4000 },
      }),
    );
    const first = spawn(
      process.execPath,
      [
        FLEETCTL_BIN,
        "--config",
        opConfig,
        "rollout",
        "--group",
        GROUP,
        file,
        "--waves",
        "34,100",
        "--healthy-within",
        "60s",
        "--sign-key",
        keyFile,
      ],
      { stdio: "ignore" },
    );
    // Killed while the first wave is still in its health window.
    await waitFor(
      "dev-f3 pulling good2",
      () => (latest("dev-f3")?.deployment === good2 ? true : undefined),
      reportWait(),
    );
    first.kill("SIGKILL");
    await new Promise((r) => first.once("exit", r));
    const mid = await fleetctl(["status", "--group", GROUP]);
    expect(mid.stdout).toMatch(new RegExp(`rollout of ${good2} .*: running, wave 1/2`));
    const r = await fleetctl(["rollout", "resume", "--group", GROUP, "--sign-key", keyFile]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`rollout of ${good2} .*: done, wave 2/2`));
    for (const id of DEVICES)
      expect(latest(id)).toMatchObject({ deployment: good2, phase: "converged", lastGood: good2 });
  });

  it("does not wait for an offline device, which converges when it comes back", async () => {
    const good3 = deploymentFor("good-3", "dev-f1");
    await stopAgent("dev-f3");
    const r = await fleetctl([
      "rollout",
      "--group",
      GROUP,
      docFile("good3", good3, "exec sleep 1002"),
      "--waves",
      "34,100",
      "--healthy-within",
      "60s",
      "--sign-key",
      keyFile,
    ]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/wave 2\/2 \(100%\): 3 device\(s\): 2 healthy, 0 pending, 0 failed, 1 offline/);
    expect(latest("dev-f3")?.deployment).not.toBe(good3);
    startAgent("dev-f3");
    await waitFor(
      "dev-f3 converged on good3 after coming back",
      () => (latest("dev-f3")?.deployment === good3 && latest("dev-f3")?.phase === "converged" ? true : undefined),
      reportWait(),
    );
  });
});

describe("fleetctl rollout abort", () => {
  it("stops a running rollout from another fleetctl, and --rollback restores the wave", async () => {
    const before = latest("dev-f1")!.deployment!;
    const good4 = deploymentFor("good-4", "dev-f2");
    const file = join(work, "good4.json");
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: good4,
        services: { web: { image, command: ["/bin/sh", "-c", "exec sleep 1004"], stopTimeoutMs: 300 } },
        update: { healthyWithinMs: 8000 },
      }),
    );
    const running = runCli("fleetctl", [
      "--config",
      opConfig,
      "rollout",
      "--group",
      GROUP,
      file,
      "--waves",
      "34,100",
      "--healthy-within",
      "60s",
      "--sign-key",
      keyFile,
    ]);
    await waitFor(
      "dev-f2 on good4",
      () => (latest("dev-f2")?.deployment === good4 && latest("dev-f2")?.phase === "converged" ? true : undefined),
      reportWait(),
    );
    const abort = await fleetctl(["rollout", "abort", "--group", GROUP, "--rollback", "--sign-key", keyFile]);
    expect(abort.status, abort.stderr).toBe(0);
    expect(abort.stdout).toMatch(new RegExp(`rollout of ${good4} .*: aborted`));
    const r = await running;
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("[E_ABORTED]");
    const back = await waitFor(
      "dev-f2 restored",
      () =>
        latest("dev-f2")?.deployment === before && latest("dev-f2")?.phase === "rolledBack"
          ? latest("dev-f2")
          : undefined,
      reportWait(),
    );
    expect(back.lastError?.code).toBe("E_ROLLED_BACK");
    // Cut short in its health window, good4 never became a deployment to roll back to.
    await waitFor(
      "dev-f2 healthy on the restored deployment",
      () => (latest("dev-f2")?.lastGood === before ? true : undefined),
      reportWait(),
    );
    // The devices outside the wave never saw good4.
    expect(seen.some((x) => x.deviceId !== "dev-f2" && x.deployment === good4)).toBe(false);
    const again = await fleetctl(["rollout", "resume", "--group", GROUP, "--sign-key", keyFile]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/was rolled back; start a new rollout \[E_CONFLICT\]/);
  });
});

describe("fleetctl refusals", () => {
  it.each([
    [
      "an invalid document, naming the field",
      ["rollout", "--group", GROUP, "BAD"],
      /services\.web\.restart: .*\[E_INVALID_DESIRED\]/,
    ],
    [
      "waves that narrow",
      ["rollout", "--group", GROUP, "OK", "--waves", "50,10"],
      /--waves 50,10: each wave must be wider than the one before/,
    ],
    [
      "a generation the topic already holds",
      ["deploy", "--group", GROUP, "STALE"],
      /generation: 1 is not newer than \d+, which fleet\/groups\/pilot\/desired already holds.*\[E_STALE_GENERATION\]/,
    ],
    [
      "a signing key that is not one",
      ["deploy", "--group", GROUP, "--sign-key", "OK", "OK"],
      /--sign-key .*: not an ed25519 private key/,
    ],
  ])("refuses %s, publishing nothing", async (_what, args, message) => {
    const bad = join(work, "bad.json");
    writeFileSync(
      bad,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: "bad",
        services: { web: { image, restart: "sometimes" } },
      }),
    );
    const ok = join(work, "ok.json");
    writeFileSync(ok, JSON.stringify({ apiVersion: "fleetlet/v1", deployment: "ok", services: {} }));
    const stale = join(work, "stale.json");
    writeFileSync(
      stale,
      JSON.stringify({ apiVersion: "fleetlet/v1", deployment: "stale", generation: 1, services: {} }),
    );
    const before = seen.length;
    const r = await fleetctl(args.map((a) => ({ BAD: bad, OK: ok, STALE: stale })[a] ?? a));
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(message);
    await new Promise((res) => setTimeout(res, 300));
    expect(
      seen.slice(before).filter((s) => s.deployment === "bad" || s.deployment === "ok" || s.deployment === "stale"),
    ).toEqual([]);
  });
});

describe("fleetctl status --watch --share", () => {
  it("splits the live updates between the instances of one shared subscription", async () => {
    const watch = () =>
      spawn(
        process.execPath,
        [FLEETCTL_BIN, "--config", opConfig, "status", "--watch", "--json", "--share", "aggregators"],
        { stdio: ["ignore", "pipe", "inherit"] },
      );
    const instances = [watch(), watch()];
    const outputs = instances.map((p) => {
      const out = { text: "" };
      p.stdout!.on("data", (d) => {
        out.text += d;
      });
      return out;
    });
    const closed = instances.map((p) => new Promise((r) => p.once("close", r)));
    // Each prints its snapshot once its shared subscription is in place.
    await waitFor("both instances' snapshots", () => outputs.every((o) => o.text.includes("\n")), {
      timeoutMs: 30_000,
    });
    const updates = () =>
      outputs.map((o) => {
        const [snapshot, ...lines] = o.text.trim().split("\n");
        expect(JSON.parse(snapshot!).map((d: { deviceId: string }) => d.deviceId)).toEqual(DEVICES);
        return lines
          .filter((l) => l.endsWith("}"))
          .map((l) => JSON.parse(l) as { deviceId: string; reported: ReportedState | null })
          .filter((u) => u.reported)
          .map((u) => `${u.deviceId} ${u.reported!.ts}`);
      });
    // Live updates: each device's service restarted (through its status socket) is a reported change or two.
    for (const id of DEVICES) expect(await restartWeb(id)).toBe(200);
    await waitFor("updates at both instances", () => updates().every((u) => u.length > 0), { timeoutMs: 30_000 });
    for (const p of instances) p.kill("SIGTERM");
    await Promise.all(closed);
    const [first, second] = updates();
    expect(first!.length).toBeGreaterThan(0);
    expect(second!.length).toBeGreaterThan(0);
    // Each report went to exactly one of the two.
    expect(first!.filter((u) => second!.includes(u))).toEqual([]);
  });
});

describe("signed desired state", () => {
  const publish = (id: string, doc: unknown) =>
    watcher.publishAsync(`fleet/devices/${id}/desired`, typeof doc === "string" ? doc : JSON.stringify(doc), {
      qos: 1,
      retain: true,
    });
  const deviceDoc = (generation: number, target = "device/dev-f2") => ({
    apiVersion: "fleetlet/v1",
    deployment: "device-own",
    generation,
    target,
    services: { web: { image, command: ["/bin/sh", "-c", "exec sleep 1003"] } },
  });

  it("rejects unsigned, tampered and foreign-signed documents with E_BAD_SIGNATURE and leaves the service running", async () => {
    const pid = pidOf("dev-f2");
    const generation = latest("dev-f2")!.generation;
    const key = createPrivateKey(readFileSync(keyFile));
    const foreign = (await import("node:crypto")).generateKeyPairSync("ed25519").privateKey;
    const cases: [string, unknown][] = [
      ["unsigned", deviceDoc(100)],
      ["tampered", { ...signDocument(deviceDoc(101), key), deployment: "device-evil" }],
      ["signed by an unknown key", signDocument(deviceDoc(102), foreign)],
      ["signed for another device, replayed to this one", signDocument(deviceDoc(103, "device/dev-f1"), key)],
      ["signed without naming its target", signDocument({ ...deviceDoc(104), target: undefined }, key)],
    ];
    for (const [what, doc] of cases) {
      const mark = seen.length;
      await publish("dev-f2", doc);
      const r = await waitFor(
        `${what} document rejected`,
        () => seen.slice(mark).find((s) => s.deviceId === "dev-f2" && s.phase === "rejected"),
        reportWait(),
      );
      expect(r.lastError?.code, what).toBe("E_BAD_SIGNATURE");
      expect(r.generation, what).toBe(generation);
      expect(r.services.web?.pid, what).toBe(pid);
    }
  });

  it("applies a device document that fleetctl numbers from its own topic, whatever generation the group's documents reached", async () => {
    const groupGeneration = latest("dev-f3")!.generation!;
    expect(groupGeneration).toBeGreaterThan(1);
    const file = join(work, "own-f3.json");
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: "own-f3",
        services: { web: { image, command: ["/bin/sh", "-c", "exec sleep 1005"], stopTimeoutMs: 300 } },
      }),
    );
    const r = await fleetctl(["deploy", "--device", "dev-f3", "--sign-key", keyFile, file]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/published deployment own-f3 generation 1 to fleet\/devices\/dev-f3\/desired .*signed/);
    const own = await waitFor(
      "dev-f3 on its own document",
      () =>
        latest("dev-f3")?.deployment === "own-f3" && latest("dev-f3")?.phase === "converged"
          ? latest("dev-f3")
          : undefined,
      reportWait(),
    );
    expect(own.source).toBe("device");
    expect(latest("dev-f1")?.source).toBe("group:pilot");
  });

  it("applies a properly signed device document, and ignores a replay of an older one", async () => {
    const key = createPrivateKey(readFileSync(keyFile));
    const old = signDocument(deviceDoc(200), key);
    await publish("dev-f2", signDocument(deviceDoc(201), key));
    await waitFor(
      "device-own converged",
      () =>
        latest("dev-f2")?.deployment === "device-own" && latest("dev-f2")?.phase === "converged" ? true : undefined,
      reportWait(),
    );
    const pid = pidOf("dev-f2");
    const mark = seen.length;
    await publish("dev-f2", old);
    await new Promise((r) => setTimeout(r, 2500)); // what the replay would change would be reported by then
    // Ignored: nothing changed, so nothing was reported; the retained state is still generation 201's.
    expect(seen.slice(mark).filter((s) => s.deviceId === "dev-f2")).toEqual([]);
    expect(latest("dev-f2")).toMatchObject({ deployment: "device-own", generation: 201, phase: "converged" });
    expect(latest("dev-f2")!.services.web?.pid).toBe(pid);
  });
});
