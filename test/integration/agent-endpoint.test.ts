/**
 * A real agent whose status port is already taken by another process (as a
 * host-network container can do while the agent restarts): it must run on,
 * converge what it is told, say what is wrong in lastError and an event,
 * serve on its unix socket meanwhile, and take the port once it is free.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { ReportedState } from "../../schemas/reported.js";
import { FLEETLET_BIN, fleetctl, runCli } from "../support/fleetlet-cli.js";
import { startMosquitto } from "../support/mosquitto.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
const DEVICE = "dev-endpoint-1";
let reg: RegistryFixture;
let broker: Awaited<ReturnType<typeof startMosquitto>>;
let operator: mqtt.MqttClient;
let root: string;
let work: string;
let config: string;
let socket: string;
let image: string;
let taker: Server;
let port: number;
let agent: ChildProcess;
let agentLog = "";
const reports: ReportedState[] = [];
const events: { type: string; [k: string]: unknown }[] = [];

/** The tests wait on the agent; a timeout shows what it last said. */
const waitOpts = (timeoutMs = 45_000): WaitForOptions => ({
  timeoutMs,
  intervalMs: 100,
  context: () =>
    `last report: ${JSON.stringify(reports.at(-1))}\nevents: ${JSON.stringify(events)}\nagent stderr: ${agentLog}`,
});

function viaSocket(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    request({ socketPath: socket, path }, (res) => {
      let body = "";
      res.on("data", (d) => {
        body += d;
      });
      res.on("end", () => resolve({ status: res.statusCode!, body }));
    })
      .on("error", reject)
      .end();
  });
}

beforeAll(async () => {
  [reg, broker] = await Promise.all([startRegistry({ auth: "htpasswd" }), startMosquitto()]);
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-endpoint-"));
  taker = createServer((c) => c.destroy()).listen(0, "127.0.0.1");
  await once(taker, "listening");
  port = (taker.address() as { port: number }).port;
  socket = join(work, "run", "api.sock");
  config = join(work, "config.json");
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: DEVICE,
      mqtt: { url: broker.url, insecure: true },
      registries: registriesConfig(reg),
      api: { listen: `127.0.0.1:${port}`, socket, token: "s3cret-endpoint" },
    }),
  );
  image = `${reg.host}/endpoint/busybox:1`;
  const push = fleetctl(["--config", config, "push", rootfs, image]);
  expect(push.status, push.stderr).toBe(0);
  operator = mqtt.connect(broker.url, { clientId: "operator-endpoint" });
  await new Promise((r) => operator.once("connect", r));
  await operator.subscribeAsync([`fleet/devices/${DEVICE}/reported`, `fleet/devices/${DEVICE}/events`], { qos: 1 });
  operator.on("message", (topic, payload) => {
    if (!payload.length) return;
    const doc = JSON.parse(payload.toString());
    if (topic.endsWith("/reported")) reports.push(doc);
    else events.push(doc);
  });
  agent = spawn(process.execPath, [FLEETLET_BIN, "--root", root, "--config", config, "agent", "--heartbeat", "2"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  agent.stderr!.on("data", (d) => {
    agentLog = (agentLog + d).slice(-8192);
  });
});

afterAll(async () => {
  if (agent && agent.exitCode === null) {
    agent.kill("SIGTERM");
    await once(agent, "exit");
  }
  operator?.end(true);
  taker?.close();
  await cleanupRoot(root);
  await Promise.all([reg?.stop(), broker?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

describe("an agent whose api.listen port is taken", () => {
  it("runs on and says so: an apiUnavailable event, and the unix socket serves", async () => {
    const ev = await waitFor(
      "an apiUnavailable event",
      () => events.find((e) => e.type === "apiUnavailable"),
      waitOpts(),
    );
    expect(ev).toMatchObject({ code: "E_API_UNAVAILABLE", listen: `127.0.0.1:${port}` });
    expect(ev.message).toMatch(/EADDRINUSE/);
    expect(agent.exitCode).toBeNull();
    // The banner follows the first connection, which the event may overtake.
    const banner = new RegExp(`status on 127\\.0\\.0\\.1:${port} \\(retrying\\) and ${socket}`);
    await waitFor("the agent's banner", () => banner.test(agentLog), {
      timeoutMs: 45_000,
      intervalMs: 100,
      context: () => agentLog,
    });
    expect((await viaSocket("/healthz")).body).toBe("ok");
  });

  it("converges a deployment and reports the endpoint in lastError meanwhile", async () => {
    const doc = {
      apiVersion: "fleetlet/v1",
      deployment: "ep-1",
      generation: 1,
      services: { web: { image, command: ["/bin/sleep", "1000"], stopTimeoutMs: 300 } },
    };
    operator.publish(`fleet/devices/${DEVICE}/desired`, JSON.stringify(doc), { qos: 1, retain: true });
    const r = await waitFor(
      "converged with the endpoint's error",
      () => reports.find((x) => x.phase === "converged" && x.lastError?.code === "E_API_UNAVAILABLE"),
      waitOpts(),
    );
    expect(r.services.web).toMatchObject({ state: "running" });
    expect(r.lastError!.message).toContain(`not listening on 127.0.0.1:${port} (retrying)`);
    const local = JSON.parse((await viaSocket("/v1/status")).body) as ReportedState;
    expect([local.services.web?.state, local.lastError?.code]).toEqual(["running", "E_API_UNAVAILABLE"]);
    const cli = await runCli("fleetlet", ["--root", root, "--config", config, "status"], { timeoutMs: 30_000 });
    expect(cli.stdout, cli.stderr).toMatch(/deployment ep-1 generation 1, converged \(E_API_UNAVAILABLE: /);
    expect(agent.exitCode).toBeNull();
  });

  it("binds the port once it is free, and clears lastError", async () => {
    await new Promise((r) => taker.close(r));
    await waitFor("an apiAvailable event", () => events.find((e) => e.type === "apiAvailable"), waitOpts());
    const cleared = await waitFor(
      "a report without the error",
      () => (reports.at(-1)?.lastError === null ? reports.at(-1) : undefined),
      waitOpts(),
    );
    expect(cleared.phase).toBe("converged");
    const res = await fetch(`http://127.0.0.1:${port}/v1/status`);
    const tcp = (await res.json()) as ReportedState;
    expect([res.status, tcp.deviceId, tcp.services.web?.state, tcp.lastError]).toEqual([200, DEVICE, "running", null]);
  });
});
