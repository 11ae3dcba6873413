/**
 * `fleetlet agent` end to end: real mosquitto, real registry, real
 * containers. Desired state is published as an operator would; what the
 * agent reports is read back from the broker and the status endpoint.
 */
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { ReportedState } from "../../schemas/reported.js";
import { fleetctl, runCli, spawnAgent } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { startMosquitto } from "../support/mosquitto.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
const DEVICE = "dev-agent-1";
let reg: RegistryFixture;
let broker: Awaited<ReturnType<typeof startMosquitto>>;
let root: string;
let work: string;
let config: string;
let image: string;
let apiPort: number;
let agentProc: ChildProcess | undefined;
let operator: mqtt.MqttClient;
const reports: ReportedState[] = [];
const statuses: { online: boolean }[] = [];

const startAgent = (): ChildProcess => spawnAgent(root, config);

/** How the tests wait on the agent: a timeout shows its last report. */
const reportWait = (timeoutMs = 30_000): WaitForOptions => ({
  timeoutMs,
  intervalMs: 100,
  context: () => `last report: ${JSON.stringify(reports.at(-1))}`,
});

const latest = () => reports.at(-1);
function publishDesired(doc: unknown): void {
  operator.publish(`fleet/devices/${DEVICE}/desired`, typeof doc === "string" ? doc : JSON.stringify(doc), {
    qos: 1,
    retain: true,
  });
}
const svc = (greeting: string, extra: Record<string, unknown> = {}) => ({
  image,
  command: ["/bin/sh", "-c", "echo hi $GREETING; exec sleep 1000"],
  env: { GREETING: greeting },
  stopTimeoutMs: 300,
  ...extra,
});

beforeAll(async () => {
  [reg, broker] = await Promise.all([startRegistry({ auth: "htpasswd" }), startMosquitto()]);
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-agent-"));
  apiPort = await freePort();
  config = join(work, "config.json");
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: DEVICE,
      groups: ["pilot"],
      mqtt: { url: broker.url, insecure: true },
      registries: registriesConfig(reg),
      api: { listen: `127.0.0.1:${apiPort}`, socket: join(work, "api.sock"), token: "s3cret" },
    }),
  );
  image = `${reg.host}/agent/busybox:1`;
  expect(fleetctl(["--config", config, "push", rootfs, image]).status).toBe(0);
  operator = mqtt.connect(broker.url, { clientId: "operator-test" });
  await new Promise((r) => operator.once("connect", r));
  operator.subscribe([`fleet/devices/${DEVICE}/reported`, `fleet/devices/${DEVICE}/status`], { qos: 1 });
  operator.on("message", (topic, payload) => {
    if (!payload.length) return;
    if (topic.endsWith("/reported")) reports.push(JSON.parse(payload.toString()));
    else statuses.push(JSON.parse(payload.toString()));
  });
  agentProc = startAgent();
});

afterAll(async () => {
  agentProc?.kill("SIGTERM");
  operator?.end(true);
  await cleanupRoot(root);
  await Promise.all([reg.stop(), broker.stop()]);
});

describe("fleetlet agent", () => {
  it("converges on a published desired state and reports it field by field", async () => {
    publishDesired({ apiVersion: "fleetlet/v1", deployment: "web-1", generation: 1, services: { web: svc("one") } });
    const r = await waitFor(
      "converged generation 1",
      () => (latest()?.phase === "converged" && latest()?.generation === 1 ? latest() : undefined),
      reportWait(),
    );
    expect(r.deviceId).toBe(DEVICE);
    expect(r.deployment).toBe("web-1");
    expect(r.lastError).toBeNull();
    expect(r.agent.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(["v1", "v2", "hybrid"]).toContain(r.agent.cgroupMode);
    expect(Date.parse(r.ts)).toBeGreaterThan(Date.now() - 60_000);
    const web = r.services.web!;
    expect(web).toMatchObject({ image, state: "running", restarts: 0, health: "none" });
    expect(web.digest).toMatch(/^sha256:/);
    expect(web.pid).toBeGreaterThan(1);
    expect(statuses.at(-1)?.online).toBe(true);
  });

  it("serves the same state on the status endpoint, over TCP and the unix socket", async () => {
    const viaTcp = await (await fetch(`http://127.0.0.1:${apiPort}/v1/status`)).json();
    expect(viaTcp.services.web.state).toBe("running");
    const viaSocket = await new Promise<ReportedState>((resolve, reject) => {
      request({ socketPath: join(work, "api.sock"), path: "/v1/status" }, (res) => {
        let body = "";
        res.on("data", (d) => {
          body += d;
        });
        res.on("end", () => resolve(JSON.parse(body)));
      })
        .on("error", reject)
        .end();
    });
    expect(viaSocket.services.web!.pid).toBe(viaTcp.services.web.pid);
    const status = await runCli("fleetlet", ["--root", root, "--config", config, "status"]);
    expect(status.stdout).toMatch(/deployment web-1 generation 1, converged/);
    expect(status.stdout).toMatch(/^web\s+running/m);
  });

  it("rejects an invalid document with the field named and leaves the service running", async () => {
    const pid = latest()!.services.web!.pid;
    publishDesired({
      apiVersion: "fleetlet/v1",
      deployment: "bad",
      generation: 2,
      services: { web: { ...svc("x"), restart: "sometimes" } },
    });
    const r = await waitFor("rejected", () => (latest()?.phase === "rejected" ? latest() : undefined), reportWait());
    expect(r.lastError?.code).toBe("E_INVALID_DESIRED");
    expect(r.lastError?.message).toContain("services.web.restart");
    expect(r.services.web!.pid).toBe(pid);
  });

  it("keeps services running through a kill -9 of the agent, and the new agent adopts them", async () => {
    const pid = latest()!.services.web!.pid;
    agentProc!.kill("SIGKILL");
    await waitFor("the last will: offline", () => (statuses.at(-1)?.online === false ? true : undefined), reportWait());
    expect(
      JSON.parse(
        readFileSync(
          join(
            root,
            "containers",
            JSON.parse(readFileSync(join(root, "db.json"), "utf8")).services.web.containerId,
            "running.json",
          ),
          "utf8",
        ),
      ).init.pid,
    ).toBe(pid);
    reports.length = 0;
    agentProc = startAgent();
    const r = await waitFor(
      "a report from the new agent",
      () => (latest()?.services.web?.state === "running" ? latest() : undefined),
      reportWait(),
    );
    expect(r.services.web!.pid).toBe(pid);
    expect(r.services.web!.restarts).toBe(0);
    await waitFor("online again", () => (statuses.at(-1)?.online === true ? true : undefined), reportWait());
  });

  it("swaps the container for an updated env, then rolls a broken update back", async () => {
    const pid = latest()!.services.web!.pid;
    publishDesired({ apiVersion: "fleetlet/v1", deployment: "web-3", generation: 3, services: { web: svc("three") } });
    const swapped = await waitFor(
      "converged generation 3",
      () => (latest()?.phase === "converged" && latest()?.generation === 3 ? latest() : undefined),
      reportWait(),
    );
    expect(swapped.services.web!.pid).not.toBe(pid);
    publishDesired({
      apiVersion: "fleetlet/v1",
      deployment: "web-4",
      generation: 4,
      services: { web: svc("four", { command: ["/bin/false"] }) },
      update: { healthyWithinMs: 3000 },
    });
    const back = await waitFor(
      "rolled back",
      () => (latest()?.phase === "rolledBack" ? latest() : undefined),
      reportWait(40_000),
    );
    expect(back.lastError?.code).toBe("E_UNHEALTHY");
    expect(back.lastError?.message).toContain("rolled back to web-3");
    // The restored service's shell echoes once it runs: a rollback has no probation to wait that out.
    const lastLine = async () =>
      (
        await fetch(`http://127.0.0.1:${apiPort}/v1/services/web/logs?tail=1`, {
          headers: { authorization: "Bearer s3cret" },
        })
      ).text();
    await waitFor("the restored service's greeting", async () => (await lastLine()) !== "");
    expect(await lastLine()).toBe("hi three\n");
  });
});

describe("fleetlet agent under trouble", () => {
  it("restarts a crashing service with growing backoff", async () => {
    publishDesired({
      apiVersion: "fleetlet/v1",
      deployment: "crashy",
      generation: 10,
      services: {
        web: svc("crash", {
          command: ["/bin/sh", "-c", "cut -d' ' -f1 /proc/uptime >> /data/starts; exit 1"],
          volumes: [{ name: "crashdata", target: "/data" }],
        }),
      },
      update: { healthyWithinMs: 60_000, rollback: false },
    });
    const starts = join(root, "volumes", "crashdata", "data", "starts");
    // The probe throws until the first start writes the file; waitFor asks again.
    await waitFor("four starts", () => readFileSync(starts, "utf8").trim().split("\n").length >= 4, reportWait(20_000));
    const t = readFileSync(starts, "utf8")
      .trim()
      .split("\n")
      .map((n) => Number(n) * 1000);
    const gaps = t.slice(1).map((v, i) => v - t[i]!);
    // 1 s, 2 s, 4 s apart (plus start-up time each)
    expect(gaps[0]).toBeGreaterThanOrEqual(900);
    expect(gaps[1]).toBeGreaterThanOrEqual(1800);
    expect(gaps[2]).toBeGreaterThanOrEqual(3600);
    await waitFor(
      "three restarts reported",
      () => ((latest()?.services.web?.restarts ?? 0) >= 3 ? true : undefined),
      reportWait(10_000),
    );
  });

  it("converges after a kill -9 in the middle of a swap, with no duplicate or orphaned container", async () => {
    publishDesired({
      apiVersion: "fleetlet/v1",
      deployment: "swap",
      generation: 11,
      services: { web: svc("swap"), extra: svc("extra") },
    });
    // A swap takes a few hundred milliseconds here: kill as soon as the new containers appear.
    const containers = join(root, "containers");
    await waitFor(
      "a container of generation 11",
      () => (readdirSync(containers).some((n) => n.startsWith("extra.")) ? true : undefined),
      reportWait(10_000),
    );
    agentProc!.kill("SIGKILL");
    await new Promise((r) => agentProc!.once("exit", r));
    agentProc = startAgent();
    await waitFor(
      "converged generation 11",
      () => (latest()?.generation === 11 && latest()?.phase === "converged" ? true : undefined),
      reportWait(40_000),
    );
    const ps = await runCli("fleetlet", ["--root", root, "ps", "-a", "--json"]);
    const ids = (JSON.parse(ps.stdout) as { id: string; status: string }[]).map((c) => `${c.id}:${c.status}`).sort();
    expect(ids.length).toBe(2);
    expect(ids.filter((c) => c.startsWith("web.")).length).toBe(1);
    expect(ids.filter((c) => c.startsWith("extra.")).length).toBe(1);
    expect(ids.every((c) => c.endsWith(":running"))).toBe(true);
  });
});

describe("fleetlet agent interrupted mid-pull", () => {
  it("converges after a kill -9 while pulling, resuming the download", async () => {
    agentProc!.kill("SIGTERM");
    await new Promise((r) => agentProc!.once("exit", r));
    const dir = mkdtempSync(join(tmpdir(), "fleetlet-agent-big-"));
    writeFileSync(join(dir, "payload.bin"), randomBytes(4 * 1024 * 1024));
    const big = `${reg.host}/agent/big:1`;
    expect(fleetctl(["--config", config, "push", "--base", image, dir, big]).status).toBe(0);
    // The same device, its downloads capped so that the pull is still running when it is killed.
    const capped = JSON.parse(readFileSync(config, "utf8"));
    capped.pull = { maxRateBytesPerSec: 1024 * 1024, concurrency: 1 };
    writeFileSync(config, JSON.stringify(capped));
    agentProc = startAgent();
    publishDesired({
      apiVersion: "fleetlet/v1",
      deployment: "big",
      generation: 20,
      services: { web: { ...svc("big"), image: big } },
    });
    await waitFor(
      "pulling generation 20",
      () => (latest()?.generation === 20 && latest()?.phase === "pulling" ? true : undefined),
      reportWait(),
    );
    const ingest = join(root, "ingest");
    await waitFor(
      "a partial download",
      () => (readdirSync(ingest).some((f) => statSync(join(ingest, f)).size > 512 * 1024) ? true : undefined),
      reportWait(10_000),
    );
    agentProc!.kill("SIGKILL");
    await new Promise((r) => agentProc!.once("exit", r));
    agentProc = startAgent();
    const r = await waitFor(
      "converged generation 20",
      () => (latest()?.generation === 20 && latest()?.phase === "converged" ? latest() : undefined),
      reportWait(40_000),
    );
    expect(r.services.web!.image).toBe(big);
    expect(readdirSync(ingest)).toEqual([]);
  });
});
