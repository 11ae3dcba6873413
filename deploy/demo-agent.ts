/**
 * The agent part of `npm run demo`: a local mosquitto and a local TLS
 * registry, a busybox image pushed with fleetctl, the agent started, and
 * three desired states published as an operator would — a first deployment,
 * an update that swaps the container, and a broken update that rolls back.
 * Each step waits for the agent's reported state and shows the status table.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import mqtt from "mqtt";
import type { ReportedState } from "../schemas/reported.js";
import { freePort } from "../test/support/free-port.js";
import { startMosquitto } from "../test/support/mosquitto.js";
import { startRegistry } from "../test/support/registry.js";
import { waitFor } from "../test/support/wait-for.js";

const DEVICE = "demo-device";

export async function agentDemo(opts: {
  work: string;
  rootfs: string;
  bins: { fleetlet: string; fleetctl: string };
  step: (title: string, run: () => Promise<boolean>) => Promise<void>;
}): Promise<void> {
  const { work, step } = opts;
  const [reg, broker] = await Promise.all([startRegistry({ auth: "htpasswd" }), startMosquitto()]);
  const root = join(work, "agent-state");
  const config = join(work, "agent-config.json");
  const apiPort = await freePort();
  writeFileSync(
    config,
    JSON.stringify(
      {
        deviceId: DEVICE,
        groups: ["pilot"],
        mqtt: { url: broker.url, insecure: true },
        registries: { [reg.host]: { username: reg.username, password: reg.password, ca: reg.caFile } },
        api: { listen: `127.0.0.1:${apiPort}`, socket: join(work, "api.sock"), token: "demo-token" },
      },
      null,
      2,
    ),
  );
  console.log(
    `\nlocal broker ${broker.url}, local TLS registry ${reg.host} (htpasswd), agent status on 127.0.0.1:${apiPort}`,
  );
  const image = `${reg.host}/demo/web:1`;
  let agent: ChildProcess | undefined;
  const operator = mqtt.connect(broker.url, { clientId: "demo-operator" });
  const reports: ReportedState[] = [];
  try {
    await new Promise((r) => operator.once("connect", r));
    operator.subscribe(`fleet/devices/${DEVICE}/reported`, { qos: 1 });
    operator.on("message", (_t, p) => p.length && reports.push(JSON.parse(p.toString())));
    /** The agent's latest report once it shows `what`; a timeout fails the step and shows that report. */
    const reportShowing = (what: string, pred: (r: ReportedState) => boolean, timeoutMs = 45_000) =>
      waitFor(
        what,
        () => {
          const r = reports.at(-1);
          return r && pred(r) && r;
        },
        { timeoutMs, intervalMs: 200, context: () => `last report: ${JSON.stringify(reports.at(-1))}` },
      );
    const statusTable = () => {
      const r = spawnSync(process.execPath, [opts.bins.fleetlet, "--root", root, "--config", config, "status"], {
        encoding: "utf8",
      });
      console.log(r.stdout.replace(/^/gm, "    ").trimEnd());
    };
    const publish = (doc: object) => {
      console.log(`\n  operator publishes to fleet/devices/${DEVICE}/desired:\n    ${JSON.stringify(doc)}`);
      operator.publish(`fleet/devices/${DEVICE}/desired`, JSON.stringify(doc), { qos: 1, retain: true });
    };
    const web = (
      greeting: string,
      command = ["/bin/sh", "-c", "echo serving $GREETING; exec httpd -f -p 8080 -h /"],
    ) => ({
      image,
      command,
      env: { GREETING: greeting },
      stopTimeoutMs: 500,
      volumes: [{ name: "web-data", target: "/data" }],
    });

    await step("Push a busybox-based image with fleetctl push", async () => {
      const r = spawnSync(
        process.execPath,
        [opts.bins.fleetctl, "--config", config, "push", "--cmd", "/bin/sh", opts.rootfs, image],
        { encoding: "utf8" },
      );
      console.log(`    ${r.stdout.trim()}`);
      return r.status === 0;
    });
    await step("Start the agent", async () => {
      agent = spawn(
        process.execPath,
        [opts.bins.fleetlet, "--root", root, "--config", config, "agent", "--heartbeat", "5"],
        { stdio: ["ignore", "ignore", "inherit"] },
      );
      await reportShowing("the agent's first report", (r) => r.deviceId === DEVICE, 15_000);
      return true;
    });
    await step("Publish a desired state and watch it converge", async () => {
      publish({ apiVersion: "fleetlet/v1", deployment: "web-1", generation: 1, services: { web: web("v1") } });
      const r = await reportShowing("generation 1 converged", (x) => x.generation === 1 && x.phase === "converged");
      statusTable();
      return r.services.web?.state === "running";
    });
    await step("Publish an update and watch it swap the container", async () => {
      const pid = reports.at(-1)?.services.web?.pid;
      publish({ apiVersion: "fleetlet/v1", deployment: "web-2", generation: 2, services: { web: web("v2") } });
      const r = await reportShowing("generation 2 converged", (x) => x.generation === 2 && x.phase === "converged");
      statusTable();
      return r.services.web?.pid !== pid;
    });
    await step("Publish a broken update and watch it roll back", async () => {
      publish({
        apiVersion: "fleetlet/v1",
        deployment: "web-3-broken",
        generation: 3,
        services: { web: web("v3", ["/bin/sh", "-c", "echo crashing; exit 1"]) },
        update: { healthyWithinMs: 5000 },
      });
      const r = await reportShowing("generation 3 rolled back", (x) => x.generation === 3 && x.phase === "rolledBack");
      statusTable();
      console.log(`    lastError: ${r.lastError?.message}`);
      return r.services.web?.state === "running";
    });
  } finally {
    agent?.kill("SIGTERM");
    await new Promise((r) => (agent && agent.exitCode === null ? agent.once("exit", r) : r(null)));
    // The demo's containers go with it; a real agent's outlive it.
    spawnSync(process.execPath, [
      opts.bins.fleetlet,
      "--root",
      root,
      "rm",
      "-f",
      ...(spawnSync(process.execPath, [opts.bins.fleetlet, "--root", root, "ps", "-a", "--json"], { encoding: "utf8" })
        .stdout.match(/"id": "[^"]+"/g)
        ?.map((m) => m.slice(7, -1)) ?? []),
    ]);
    operator.end(true);
    await Promise.all([reg.stop(), broker.stop()]);
  }
}
