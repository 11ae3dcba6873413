/**
 * `npm run bench -- traffic [--quick] [--minutes N] [--keepalives 60,120,300,600] [--baseline DIR]`:
 * what an idle agent costs a metered link. Each agent (one per keepalive,
 * and with --baseline one more, running another build of fleetlet, e.g. the
 * code before a change, with its defaults) runs one converged service and
 * talks to a TLS mosquitto with client certificates through a byte-counting
 * TCP proxy: the bytes counted are the TCP payload both ways, TLS included.
 * After the idle span (10 minutes; 60 s with --quick), extrapolated to a
 * day, each agent takes one rollout step (a new generation in, reported and
 * events out, until its health window has passed) and one reconnect (the
 * link cut, as a network change would: TLS handshake, CONNECT, status,
 * resubscribe).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import { DEFAULT_MQTT_KEEPALIVE_SEC } from "../../schemas/config.js";
import { buildBusyboxRootfs } from "../support/busybox-rootfs.js";
import { type CountingProxy, startCountingProxy } from "../support/counting-proxy.js";
import { freePort } from "../support/free-port.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const HERE = new URL("../../../", import.meta.url).pathname; // the project, from build/test/bench/
const GOAL_BYTES_PER_DAY = 20 * 1024;
/** IPv4 + TCP with timestamps: what each segment adds on the wire, for the estimate beside the payload. */
const TCP_IP_HEADER = 52;
const SERVICE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"];

interface Variant {
  label: string;
  deviceId: string;
  bin: string;
  keepaliveSec: number;
  proxy: CountingProxy;
  root: string;
  child?: ChildProcess;
}
interface Counted {
  up: number;
  down: number;
  segments: number;
  upChunks: number;
}
type Doc = Record<string, unknown>;

const option = (args: string[], name: string) =>
  args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined;
const counted = (p: CountingProxy): Counted => {
  const c = p.chunks();
  return { up: p.bytesUp(), down: p.bytesDown(), segments: c.up + c.down, upChunks: c.up };
};
/** mqtt.js takes the PEM contents, not paths. */
const tlsFiles = (ca: string, cert: { cert: string; key: string }) => ({
  ca: readFileSync(ca),
  cert: readFileSync(cert.cert),
  key: readFileSync(cert.key),
});
const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;

/** The operator's view: every reported doc, status and event, by device, with payload sizes. */
class Watcher {
  readonly last = new Map<string, Doc>();
  readonly payload = new Map<string, { reported: number; events: number; n: number }>();
  constructor(readonly client: mqtt.MqttClient) {
    client.on("message", (topic, buf) => {
      const [, , id, channel] = topic.split("/");
      if (!id || !channel || !buf.length) return;
      const p = this.payload.get(id) ?? { reported: 0, events: 0, n: 0 };
      if (channel === "reported") {
        p.reported += buf.length;
        p.n++;
      }
      if (channel === "events") p.events += buf.length;
      this.payload.set(id, p);
      if (channel === "reported") this.last.set(id, JSON.parse(buf.toString()));
      if (channel === "status") this.last.set(`${id}/status`, JSON.parse(buf.toString()));
    });
  }
  /** Waits until the device reports `generation` converged and past its health window. */
  settled(id: string, deployment: string, generation: number): Promise<unknown> {
    return waitFor(
      `${id} converged on ${deployment} generation ${generation}`,
      () => {
        const r = this.last.get(id);
        return r?.generation === generation && r.phase === "converged" && r.lastGood === deployment;
      },
      { timeoutMs: 120_000, intervalMs: 100, context: () => JSON.stringify(this.last.get(id)) },
    );
  }
}

function desired(image: string, generation: number): string {
  const services = { web: { image, command: SERVICE_CMD, env: { V: String(generation) }, stopTimeoutMs: 500 } };
  return JSON.stringify({ apiVersion: "fleetlet/v1", deployment: `web-${generation}`, generation, services });
}

/** Counts what crosses each variant's proxy while `work` runs (and `settleMs` after it). */
async function measure(variants: Variant[], work: () => Promise<unknown>, settleMs: number): Promise<Counted[]> {
  for (const v of variants) v.proxy.reset();
  await work();
  await sleep(settleMs);
  return variants.map((v) => counted(v.proxy));
}

function row(label: string, c: Counted, scale = 1): string {
  const payload = (c.up + c.down) * scale;
  const wire = payload + c.segments * TCP_IP_HEADER * scale;
  return `  ${label.padEnd(34)} ${String(Math.round(c.up * scale)).padStart(9)} up ${String(Math.round(c.down * scale)).padStart(9)} down = ${kib(payload).padStart(11)}   (~${kib(wire)} with TCP/IP headers)`;
}

/** @long the bench's whole story: brokers, agents, the idle span, the rollout step and the reconnect, in order */
export async function trafficBench(args: string[]): Promise<void> {
  const quick = args.includes("--quick");
  const minutes = Number(option(args, "minutes") ?? (quick ? 1 : 10));
  const keepalives = (option(args, "keepalives") ?? String(DEFAULT_MQTT_KEEPALIVE_SEC)).split(",").map(Number);
  const baseline = option(args, "baseline");
  const work = mkdtempSync(join(tmpdir(), "fleetlet-traffic-bench-"));
  const reg = await startRegistry({ auth: "htpasswd" });
  let broker: MosquittoFixture | undefined;
  let operator: mqtt.MqttClient | undefined;
  const variants: Variant[] = [];
  try {
    broker = await startMosquitto({ tls: true, clientCerts: true });
    const b = broker;
    const image = `${reg.host}/traffic/busybox:1`;
    const cfg = join(work, "operator.json");
    const opCert = b.clientCert("operator");
    const mqttOf = (url: string, cert: { cert: string; key: string }, keepaliveSec?: number) => ({
      url,
      ca: b.caFile,
      ...cert,
      ...(keepaliveSec ? { keepaliveSec } : {}),
    });
    const registries = registriesConfig(reg);
    writeFileSync(cfg, JSON.stringify({ mqtt: mqttOf(b.url, opCert), registries }));
    const push = spawn(
      process.execPath,
      [join(HERE, "bin/fleetctl.js"), "--config", cfg, "push", buildBusyboxRootfs(join(work, "rootfs")), image],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let pushed = "";
    push.stdout!.on("data", (d) => (pushed += d));
    await new Promise((r) => push.once("exit", r));
    const pinned = pushed.trim().split("\n").at(-1) ?? "";
    if (!pinned.includes("@sha256:")) throw new Error(`fleetctl push printed no pinned reference: ${pushed}`);

    operator = mqtt.connect(b.url, { clientId: "traffic-operator", ...tlsFiles(b.caFile, opCert) });
    await new Promise((r) => operator!.once("connect", r));
    const watch = new Watcher(operator);
    await operator.subscribeAsync(["fleet/devices/+/reported", "fleet/devices/+/status", "fleet/devices/+/events"], {
      qos: 1,
    });

    const plan = [
      ...keepalives.map((k) => ({ label: `keepalive ${k} s`, bin: join(HERE, "bin/fleetlet.js"), keepaliveSec: k })),
      ...(baseline
        ? [{ label: `baseline (${baseline}), its defaults`, bin: join(baseline, "bin/fleetlet.js"), keepaliveSec: 0 }]
        : []),
    ];
    for (const [i, p] of plan.entries()) {
      const deviceId = `traffic-${i}`;
      const proxy = await startCountingProxy({ host: "127.0.0.1", port: b.port });
      const root = join(work, `root-${i}`);
      const config = join(work, `config-${i}.json`);
      const api = await freePort();
      writeFileSync(
        config,
        JSON.stringify({
          deviceId,
          mqtt: mqttOf(`mqtts://${proxy.host}`, b.clientCert(deviceId), p.keepaliveSec),
          registries,
          api: { listen: `127.0.0.1:${api}`, socket: join(work, `api-${i}.sock`) },
        }),
      );
      const v: Variant = { ...p, deviceId, proxy, root };
      v.child = spawn(process.execPath, [v.bin, "--root", root, "--config", config, "agent"], {
        stdio: ["ignore", "ignore", "inherit"],
      });
      variants.push(v);
    }
    const publish = (v: Variant, g: number) =>
      operator!.publishAsync(`fleet/devices/${v.deviceId}/desired`, desired(pinned, g), { qos: 1, retain: true });
    await Promise.all(
      variants.map(async (v) => {
        await publish(v, 1);
        await watch.settled(v.deviceId, "web-1", 1);
      }),
    );
    await sleep(3000); // the last report's acknowledgement

    const spanMs = minutes * 60_000;
    console.log(
      `traffic: ${variants.length} agent(s), each with one converged service, over TLS with client certificates; idle for ${minutes} min…`,
    );
    const idle = await measure(variants, () => sleep(spanMs), 0);
    const payloadBefore = variants.map((v) => ({
      ...(watch.payload.get(v.deviceId) ?? { reported: 0, events: 0, n: 0 }),
    }));
    const step = await measure(
      variants,
      () =>
        Promise.all(
          variants.map(async (v) => {
            await publish(v, 2);
            await watch.settled(v.deviceId, "web-2", 2);
          }),
        ),
      3000,
    );
    const stepPayload = variants.map((v, i) => {
      const now = watch.payload.get(v.deviceId) ?? { reported: 0, events: 0, n: 0 };
      const was = payloadBefore[i]!;
      return `${now.n - was.n} reported doc(s), ${now.reported - was.reported} B; events ${now.events - was.events} B (MQTT payloads)`;
    });
    const reconnect = await measure(
      variants,
      async () => {
        const marks = variants.map((v) => v.proxy.connections());
        for (const v of variants) v.proxy.dropConnections();
        await waitFor("every agent reconnected", () => variants.every((v, i) => v.proxy.connections() > marks[i]!), {
          timeoutMs: 60_000,
        });
      },
      5000,
    );

    const perDay = 86_400_000 / spanMs;
    console.log(`\nidle, extrapolated to a day (TCP payload both ways, TLS included; measured over ${minutes} min):`);
    // A span that is not a multiple of the keepalive holds a varying number of pings: say how many it caught.
    for (const [i, v] of variants.entries())
      console.log(`${row(v.label, idle[i]!, perDay)}   [${idle[i]!.upChunks} segment(s) up in the span]`);
    const main = Math.max(
      0,
      variants.findIndex((v) => v.keepaliveSec === DEFAULT_MQTT_KEEPALIVE_SEC),
    );
    const mainDay = (idle[main]!.up + idle[main]!.down) * perDay;
    console.log(
      `  goal: <= ${kib(GOAL_BYTES_PER_DAY)} a day at the default keepalive: ${kib(mainDay)} ${mainDay <= GOAL_BYTES_PER_DAY ? "ok" : "MISSED"}`,
    );
    console.log(
      "\none rollout step per device (a new generation in; reported and events out, until past its health window):",
    );
    for (const [i, v] of variants.entries()) console.log(`${row(v.label, step[i]!)}\n    ${stepPayload[i]}`);
    console.log(
      "\none reconnect (link cut: TLS handshake with client certificate, CONNECT, status, resubscribe, and what changed):",
    );
    for (const [i, v] of variants.entries()) console.log(row(v.label, reconnect[i]!));
  } finally {
    operator?.end(true);
    for (const v of variants) v.child?.kill("SIGTERM");
    await Promise.all(
      variants.map((v) =>
        v.child && v.child.exitCode === null ? new Promise((r) => v.child!.once("exit", r)) : undefined,
      ),
    );
    for (const v of variants) {
      await v.proxy.stop();
      await cleanupRoot(v.root).catch((err: Error) => console.error(`cleanup of ${v.root}: ${err.message}`));
    }
    await Promise.all([reg.stop(), broker?.stop()]);
    rmSync(work, { recursive: true, force: true });
  }
}
