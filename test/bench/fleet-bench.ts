/**
 * `npm run bench -- fleet [--devices N] [--waves 1,10,50,100] [--shards K] [--probation MS] [--heartbeat S] [--profile DIR]`:
 * a staged rollout to N SIMULATED devices through a real mosquitto.
 *
 * The devices are real agents (schemas, signature and wave checks, planner,
 * executors, health gate) on real MQTT 5 sessions, wired as `fleetlet agent`
 * wires them, spread over K child processes; only their container runtime is
 * simulated (test/support/sim/simulated-runtime.ts: no container runs). The
 * operator is this process, driving the same Rollout, FleetClient and
 * FleetView as `fleetctl rollout`: one retained group publish per wave.
 *
 * --profile DIR writes a V8 CPU profile of each simulation process to DIR
 * (profile the operator with `node --cpu-prof build/test/bench/run.js fleet`).
 *
 * Reported: time to converge per wave and in all, MQTT messages and bytes per
 * device, broker throughput ($SYS, every second), and resident memory.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import { FleetClient } from "../../agent/fleet/fleet-client.js";
import { FleetView } from "../../agent/fleet/fleet-view.js";
import { parseWaves, Rollout } from "../../agent/fleet/rollout.js";
import { inRolloutWave } from "../../agent/protocol/waves.js";
import { freePort } from "../support/free-port.js";
import { MOSQUITTO_BIN } from "../support/mosquitto.js";
import { ShardedFleet } from "../support/sim/sharded-fleet.js";
import { cpuMs, rssKiB, type SimulatedFleetStats, simulatedDeviceIds } from "../support/sim/simulated-fleet.js";
import { printSummaries, type Summary, summarize } from "./stats.js";

const GROUP = "sim";
const GOAL_MS = 30_000;
/** One process carries 10,000 devices (~500 MiB, ~1 ms of CPU per device per 4-wave rollout); more only spread the same CPU over 2 cores. */
const DEVICES_PER_SHARD = 10_000;

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}

interface Broker {
  url: string;
  pid: number;
  fdLimit: string;
  output: () => string;
  stop(): Promise<void>;
}

/** mosquitto on loopback, plain TCP, its fd limit raised as far as the hard limit allows. */
async function startBroker(dir: string): Promise<Broker> {
  const port = await freePort();
  const conf = join(dir, "mosquitto.conf");
  const lines = [
    "user root",
    `listener ${port} 127.0.0.1`,
    "allow_anonymous true",
    "persistence false",
    "max_connections -1",
    // The operator's one subscription takes a report from every device at
    // once; mosquitto's default queue (1000 per client) would drop the rest.
    "max_queued_messages 1000000",
    "sys_interval 1",
    "log_dest stderr",
    "log_type error",
    "log_type warning",
  ];
  writeFileSync(conf, `${lines.join("\n")}\n`);
  const child: ChildProcess = spawn(
    "sh",
    ["-c", 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" -c "$1"', MOSQUITTO_BIN, conf],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let log = "";
  child.stderr!.on("data", (d) => {
    log = (log + d).slice(-8000);
  });
  const reap = () => child.kill("SIGKILL");
  process.once("exit", reap);
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited (${child.exitCode}): ${log}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = tcpConnect({ host: "127.0.0.1", port });
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on 127.0.0.1:${port}: ${log}`);
    await sleep(50);
  }
  const fdLimit = /^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${child.pid}/limits`, "utf8"))?.[1] ?? "?";
  return {
    url: `mqtt://127.0.0.1:${port}`,
    pid: child.pid!,
    fdLimit,
    output: () => log,
    stop: async () => {
      process.off("exit", reap);
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** mosquitto's $SYS counters, as they arrive every second. */
class SysCounters {
  readonly latest = new Map<string, number>();
  readonly samples: { at: number; packets: number }[] = [];
  private ticks = new Set<() => void>();

  private constructor(readonly client: mqtt.MqttClient) {
    client.on("message", (topic, payload) => {
      const key = topic.slice("$SYS/broker/".length);
      this.latest.set(key, Number.parseFloat(payload.toString()));
      if (key === "messages/sent")
        this.samples.push({ at: Date.now(), packets: this.get("messages/received") + this.get("messages/sent") });
      if (key === "uptime") for (const t of this.ticks) t();
    });
  }

  static async open(url: string): Promise<SysCounters> {
    const client = await mqtt.connectAsync(url, { clientId: "fleet-bench-sys", reconnectPeriod: 0 });
    const sys = new SysCounters(client);
    await client.subscribeAsync(["$SYS/broker/#"], { qos: 0 });
    return sys;
  }

  get(key: string): number {
    return this.latest.get(key) ?? 0;
  }

  /** Resolves once a whole fresh set of counters has come in. */
  async fresh(): Promise<Map<string, number>> {
    for (let i = 0; i < 2; i++) {
      await new Promise<void>((resolve) => {
        const t = () => {
          this.ticks.delete(t);
          resolve();
        };
        this.ticks.add(t);
      });
    }
    await sleep(200);
    return new Map(this.latest);
  }
}

const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;
const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const totals = (s: SimulatedFleetStats[]) => ({
  cpuMs: sum(s.map((x) => x.cpuMs)),
  bytesIn: sum(s.map((x) => x.bytesIn)),
  bytesOut: sum(s.map((x) => x.bytesOut)),
  desiredIn: sum(s.map((x) => x.desiredIn)),
  desiredBytesIn: sum(s.map((x) => x.desiredBytesIn)),
});

export async function fleetBench(args: string[]): Promise<void> {
  const n = Number(option(args, "devices") ?? 10_000);
  const waves = parseWaves(option(args, "waves") ?? "1,10,50,100");
  const shards = Number(option(args, "shards") ?? Math.max(1, Math.ceil(n / DEVICES_PER_SHARD)));
  const probationMs = Number(option(args, "probation") ?? 1000);
  const heartbeatMs = Number(option(args, "heartbeat") ?? 0) * 1000;
  const profile = option(args, "profile");
  if (!Number.isInteger(n) || n < 1 || !Number.isInteger(shards) || shards < 1)
    throw new Error("fleet: --devices and --shards take positive integers");
  const work = mkdtempSync(join(tmpdir(), "fleetlet-fleet-bench-"));
  let broker: Broker | undefined;
  let fleet: ShardedFleet | undefined;
  let client: FleetClient | undefined;
  let sys: SysCounters | undefined;
  try {
    broker = await startBroker(work);
    sys = await SysCounters.open(broker.url);
    const version = readFileSync(`/proc/${broker.pid}/cmdline`, "utf8").split("\0")[0];
    console.log(
      `fleet: ${n} SIMULATED devices (simulated runtime: no containers; real agents, MQTT 5 sessions, schemas and reconcile) in ${shards} process(es)`,
    );
    console.log(
      `broker: ${version} on ${broker.url}: plain TCP on loopback, no TLS; fd limit ${broker.fdLimit}; persistence off`,
    );

    const t0 = performance.now();
    let shown = 0;
    const b = broker;
    fleet = await ShardedFleet.start(
      {
        url: broker.url,
        groups: [GROUP],
        deviceIds: simulatedDeviceIds(n),
        shards,
        heartbeatMs,
        connectTimeoutMs: 10_000,
        execArgv: ["--max-old-space-size=4096", ...(profile ? ["--cpu-prof", `--cpu-prof-dir=${profile}`] : [])],
      },
      (online) => {
        if (online - shown >= n / 5) {
          shown = online;
          console.log(`  ${online} online after ${sec(performance.now() - t0)}`);
        }
      },
    ).catch((err: Error) => {
      throw new Error(
        `${err.message}\nmosquitto (fd limit ${b.fdLimit}) said: ${b.output().trim().split("\n").slice(-3).join(" | ") || "nothing"}`,
      );
    });
    const connectMs = performance.now() - t0;
    client = await FleetClient.connect({ url: broker.url, prefix: "fleet" });
    const channels = { reported: { msgs: 0, bytes: 0 }, status: { msgs: 0, bytes: 0 }, events: { msgs: 0, bytes: 0 } };
    client.onMessage((topic, payload) => {
      const c = channels[topic.slice(topic.lastIndexOf("/") + 1) as keyof typeof channels];
      if (!c) return;
      c.msgs++;
      c.bytes += payload.length;
    });
    await client.subscribe([client.topics.anyDevice("events")]);
    const view = await FleetView.open(client);
    const end = Date.now() + 60_000;
    while (view.list(GROUP).filter((d) => d.online).length < n) {
      if (Date.now() > end) {
        const trouble = [...new Set((await fleet.stats()).flatMap((s) => s.lastLog))].join("\n    ");
        throw new Error(
          `only ${view.list(GROUP).filter((d) => d.online).length} of ${n} devices online after 60 s; the sessions' last complaints:\n    ${trouble}\nmosquitto: ${broker.output().trim().split("\n").slice(-3).join(" | ")}`,
        );
      }
      await sleep(100);
    }
    console.log(
      `connect: ${n} devices online in ${sec(connectMs)} (${(n / (connectMs / 1000)).toFixed(0)}/s, at most 50 connecting at a time), seen online by the operator ${sec(performance.now() - t0)}`,
    );

    // The rollout, exactly as `fleetctl rollout` drives it.
    const deployment = `bench-${Date.now()}`;
    const raw = {
      apiVersion: "fleetlet/v1",
      deployment,
      services: { app: { image: "registry.local:5000/sim/app:1", restart: "always", stopTimeoutMs: 1000 } },
      update: { healthyWithinMs: probationMs },
    };
    const waveStart: number[] = [];
    const convergedAt = new Map<string, number>();
    const healthyAt = new Map<string, number>();
    view.onChange((d) => {
      const r = d.reported;
      if (r?.deployment !== deployment) return;
      if (r.phase === "converged" && !convergedAt.has(d.deviceId)) convergedAt.set(d.deviceId, Date.now());
      if (r.lastGood === deployment && !healthyAt.has(d.deviceId)) healthyAt.set(d.deviceId, Date.now());
    });
    const before = await sys.fresh();
    const statsBefore = totals(await fleet.stats());
    const chBefore = structuredClone(channels);
    const cpuBefore = { broker: cpuMs(broker.pid), operator: cpuMs() };
    const rollout = new Rollout({
      client,
      view,
      group: GROUP,
      raw,
      file: "fleet-bench",
      waves,
      healthyWithinMs: 120_000,
      maxFailures: { count: 0 },
      generation: 1,
      onProgress: (p) => {
        if (waveStart[p.wave] === undefined) waveStart[p.wave] = Date.parse(p.waveStartedAt);
      },
    });
    const progress = await rollout.run();
    const rolloutEnd = Date.now();
    const totalMs = rolloutEnd - waveStart[0]!;
    const cpu = { broker: cpuMs(broker.pid) - cpuBefore.broker, operator: cpuMs() - cpuBefore.operator };
    const shardStats = await fleet.stats();
    const statsAfter = totals(shardStats);
    const after = await sys.fresh();
    if (progress.state !== "done")
      throw new Error(
        `the rollout ${progress.state}: ${progress.reason}; ${JSON.stringify(progress.failures.slice(0, 5))}`,
      );

    console.log(
      `\nrollout of ${deployment} to group ${GROUP}, waves ${waves.join(",")}%, one retained group publish per wave; update.healthyWithinMs ${probationMs} (each device's probation)`,
    );
    console.log(
      `${"wave".padEnd(12)}${"devices".padStart(8)}${"all converged".padStart(15)}${"all healthy".padStart(13)}${"rollout's wave time".padStart(21)}`,
    );
    const rows: Summary[] = [];
    let previous: number | undefined;
    for (const [i, percent] of waves.entries()) {
      const ids = simulatedDeviceIds(n).filter(
        (id) =>
          inRolloutWave(id, deployment, percent) &&
          !(previous !== undefined && inRolloutWave(id, deployment, previous)),
      );
      previous = percent;
      const lat = (m: Map<string, number>) => ids.map((id) => (m.get(id) ?? Number.NaN) - waveStart[i]!);
      const conv = lat(convergedAt);
      const healthy = lat(healthyAt);
      console.log(
        `${`${i + 1} (${percent}%)`.padEnd(12)}${String(ids.length).padStart(8)}${sec(Math.max(...conv)).padStart(15)}${sec(Math.max(...healthy)).padStart(13)}${sec(progress.waveTimesMs[i]!).padStart(21)}`,
      );
      rows.push(
        summarize(`wave ${i + 1}: publish → converged`, conv),
        summarize(`wave ${i + 1}: publish → healthy`, healthy),
      );
    }
    printSummaries(
      "per device, from the wave's publish (healthy = probation passed, what the rollout waits for)",
      rows,
    );

    const d = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
    // The $SYS samples from the last one before the first publish to the first one after the end.
    const first = sys.samples.findLastIndex((s) => s.at <= waveStart[0]!);
    const last = sys.samples.findIndex((s) => s.at >= rolloutEnd);
    const window = sys.samples.slice(Math.max(0, first), last < 0 ? undefined : last + 1);
    const rate = (a: { at: number; packets: number }, b: { at: number; packets: number }) =>
      (b.packets - a.packets) / Math.max(0.001, (b.at - a.at) / 1000);
    const average = window.length > 1 ? rate(window[0]!, window.at(-1)!) : Number.NaN;
    const peak = Math.max(0, ...window.slice(1).map((s, i) => rate(window[i]!, s)));
    const out = (k: keyof typeof channels) => ({
      msgs: (channels[k].msgs - chBefore[k].msgs) / n,
      bytes: (channels[k].bytes - chBefore[k].bytes) / n,
    });
    const [rep, stat, ev] = [out("reported"), out("status"), out("events")];
    const per = (x: number) => (x / n).toFixed(1);
    console.log(`\nper device over the rollout (${sec(totalMs)}):`);
    console.log(
      `  in:  ${per(statsAfter.desiredIn - statsBefore.desiredIn)} desired docs (${per(statsAfter.desiredBytesIn - statsBefore.desiredBytesIn)} payload bytes); ${per(statsAfter.bytesIn - statsBefore.bytesIn)} TCP bytes in all`,
    );
    console.log(
      `  out: ${rep.msgs.toFixed(1)} reported (${rep.bytes.toFixed(0)} B), ${ev.msgs.toFixed(1)} events (${ev.bytes.toFixed(0)} B), ${stat.msgs.toFixed(1)} status (${stat.bytes.toFixed(0)} B); ${per(statsAfter.bytesOut - statsBefore.bytesOut)} TCP bytes in all`,
    );
    console.log(
      `broker over the rollout: ${d("messages/received")} MQTT packets in, ${d("messages/sent")} out (PUBACKs and the bench's own $SYS and events subscriptions included), ${mib(d("bytes/received") / 1024)} in, ${mib(d("bytes/sent") / 1024)} out; publishes dropped: ${d("publish/messages/dropped")}`,
    );
    console.log(
      `  throughput: ${average.toFixed(0)} packets/s (in + out) on average over the rollout, ${peak.toFixed(0)} packets/s in its busiest second`,
    );
    const cores = (ms: number) => `${sec(ms)} (${((100 * ms) / totalMs).toFixed(0)}% of a core)`;
    console.log(
      `CPU time over the rollout (${sec(totalMs)} on ${availableParallelism()} cores): simulation ${cores(statsAfter.cpuMs - statsBefore.cpuMs)}, mosquitto ${cores(cpu.broker)}, operator ${cores(cpu.operator)}`,
    );
    const simRss = shardStats.map((s) => s.rssKiB);
    console.log(
      `memory (VmRSS): simulation ${mib(sum(simRss))} in ${shards} process(es) (${simRss.map(mib).join(" + ")}; ${(sum(simRss) / n).toFixed(1)} KiB per device), mosquitto ${mib(rssKiB(broker.pid))}, operator (this process) ${mib(rssKiB())}`,
    );

    const met = totalMs <= GOAL_MS;
    console.log(`\n${"measurement".padEnd(40)}${"value".padStart(12)}${"goal".padStart(12)}  met`);
    console.log(
      `${`${n} devices: first publish → all healthy`.padEnd(40)}${sec(totalMs).padStart(12)}${`<= ${GOAL_MS / 1000} s`.padStart(12)}  ${met ? "yes" : "NO"}`,
    );
  } finally {
    const closing: Promise<unknown>[] = [];
    if (fleet) closing.push(fleet.stop().catch((err: Error) => console.error(`fleet stop: ${err.message}`)));
    if (client) closing.push(client.close());
    await Promise.all(closing);
    sys?.client.end(true);
    await broker?.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
