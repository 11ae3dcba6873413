/** `fleetctl keygen`, `deploy`, `status` and `rollout`: the operator's fleet commands over MQTT. */
import { hostname } from "node:os";
import { type RolloutProgress, rolloutProgress } from "../../schemas/rollout.js";
import { loadDeviceConfig } from "../config/device-config.js";
import { FleetError } from "../errors.js";
import { finishDocument, pickGeneration, readDocumentFile, retainedDocument } from "../fleet/desired-document.js";
import { FleetClient } from "../fleet/fleet-client.js";
import { type DeviceView, FleetView } from "../fleet/fleet-view.js";
import { parseDuration, parseFailureLimit, parseWaves, Rollout, type WaveStatus } from "../fleet/rollout.js";
import { canonicalJson } from "../protocol/canonical-json.js";
import { generateSigningKey, loadSigningKey } from "../protocol/signature.js";
import { parseArgs } from "./args.js";
import { ago, formatTable } from "./output.js";

const usage = (msg: string) => new FleetError("E_INVALID_ARGUMENT", msg, { exitCode: 2 });

export async function keygenCommand(argv: string[]): Promise<number> {
  const { positionals } = parseArgs(argv, []);
  if (positionals.length !== 1) throw usage("keygen: name the private key file to write, e.g. fleetctl keygen ops.key");
  let pub: string;
  try {
    pub = generateSigningKey(positionals[0]!);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST")
      throw new FleetError("E_CONFLICT", `keygen: ${positionals[0]} already exists; it is not overwritten`, {
        exitCode: 2,
      });
    throw err;
  }
  process.stdout.write(`${pub}\n`);
  process.stderr.write(
    `private key in ${positionals[0]} (mode 0600), public key in ${positionals[0]}.pub; add the public key to the devices' "trustedKeys"\n`,
  );
  return 0;
}

async function connect(configPath: string | undefined): Promise<FleetClient> {
  return FleetClient.connect(loadDeviceConfig(configPath).mqtt);
}

export async function deployCommand(argv: string[], configPath: string | undefined): Promise<number> {
  const { options, positionals } = parseArgs(argv, [
    { name: "device", type: "string" },
    { name: "group", type: "string" },
    { name: "sign-key", type: "string" },
  ]);
  if (positionals.length !== 1 || Boolean(options.device) === Boolean(options.group))
    throw usage("deploy: expected --device ID or --group G, and one FILE");
  const raw = readDocumentFile(positionals[0]!);
  const target = options.device ? `device/${options.device as string}` : `group/${options.group as string}`;
  finishDocument(
    raw,
    { generation: typeof raw.generation === "number" ? raw.generation : 1, target },
    { file: positionals[0]! },
  ); // refused before the broker is reached
  const key = options["sign-key"] ? loadSigningKey(options["sign-key"] as string) : undefined;
  const client = await connect(configPath);
  try {
    const topic = options.device
      ? client.topics.device(options.device as string, "desired")
      : client.topics.groupDesired(options.group as string);
    const generation = pickGeneration(raw, await retainedDocument(client, topic), topic);
    const { payload, doc } = finishDocument(
      raw,
      { generation, target },
      { file: positionals[0]!, ...(key ? { key } : {}) },
    );
    await client.publish(topic, payload, { retain: true });
    process.stdout.write(
      `published deployment ${doc.deployment} generation ${generation} to ${topic} (${payload.length} bytes, ${key ? "signed" : "unsigned"})\n`,
    );
    return 0;
  } finally {
    await client.close();
  }
}

function deviceRow(d: DeviceView, now: number): string[] {
  const r = d.reported;
  const error = d.unreadable ?? (r?.lastError ? `${r.lastError.code}: ${r.lastError.message}` : "");
  return [
    d.deviceId,
    d.online === undefined ? "?" : d.online ? "yes" : "no",
    r?.deployment ?? "-",
    String(r?.generation ?? "-"),
    r?.phase ?? "-",
    r ? String(Object.keys(r.services).length) : "-",
    error.length > 60 ? `${error.slice(0, 59)}…` : error,
    r ? ago(r.ts, now) : "",
  ];
}

function rolloutLine(p: RolloutProgress): string {
  const times = p.waveTimesMs.map((ms, i) => `wave ${i + 1} ${(ms / 1000).toFixed(1)} s`).join(", ");
  const counts = Object.entries(p.counts)
    .map(([k, v]) => `${v} ${k}`)
    .join(", ");
  return `rollout of ${p.deployment} (generation ${p.generation}) to group ${p.group}: ${p.state}, wave ${p.wave + 1}/${p.waves.length} (${p.waves[p.wave]}%)${counts ? `: ${counts}` : ""}${times ? `; ${times}` : ""}; by ${p.by}, updated ${ago(p.updatedAt)}${p.reason ? `\n  ${p.reason}` : ""}\n`;
}

async function retainedProgress(client: FleetClient, group: string): Promise<RolloutProgress | undefined> {
  const topic = client.topics.groupRollout(group);
  const payload = await client.retained(topic);
  if (!payload) return undefined;
  let parsed: ReturnType<typeof rolloutProgress.safeParse>;
  try {
    parsed = rolloutProgress.safeParse(JSON.parse(payload.toString()));
  } catch (err) {
    process.stderr.write(
      `fleetctl: warning: the retained message on ${topic} is not JSON (${(err as Error).message}); taken as no rollout\n`,
    );
    return undefined;
  }
  if (!parsed.success)
    process.stderr.write(
      `fleetctl: warning: the retained message on ${topic} is not rollout progress; taken as no rollout\n`,
    );
  return parsed.success ? parsed.data : undefined;
}

/** A document's content without what fleetctl sets (generation, target, rollout, signature). */
function sameContent(doc: Record<string, unknown>): string {
  const { generation: _g, target: _t, rollout: _r, signature: _s, ...rest } = doc;
  return canonicalJson(rest);
}

export async function statusCommand(argv: string[], configPath: string | undefined): Promise<number> {
  const { options } = parseArgs(argv, [
    { name: "group", type: "string" },
    { name: "watch", type: "boolean" },
    { name: "json", type: "boolean" },
    { name: "share", type: "string" },
  ]);
  if (options.share && !options.watch)
    throw usage("status: --share splits live updates between instances; it needs --watch");
  const group = options.group as string | undefined;
  const client = await connect(configPath);
  try {
    const progress = group ? await retainedProgress(client, group) : undefined;
    const view = await FleetView.open(client, options.share ? { share: options.share as string } : {});
    const render = () => {
      const devices = view.list(group);
      if (options.json)
        return `${JSON.stringify(devices.map((d) => ({ deviceId: d.deviceId, online: d.online ?? null, reported: d.reported ?? null, ...(d.unreadable ? { unreadable: d.unreadable } : {}) })))}\n`;
      const now = Date.now();
      const online = devices.filter((d) => d.online).length;
      return `${progress ? rolloutLine(progress) : ""}${devices.length} device(s)${group ? ` in group ${group}` : ""}, ${online} online\n${formatTable(
        ["DEVICE", "ONLINE", "DEPLOYMENT", "GEN", "PHASE", "SERVICES", "LAST ERROR", "AGE"],
        devices.map((d) => deviceRow(d, now)),
      )}`;
    };
    process.stdout.write(render());
    if (!options.watch) return 0;
    let dirty = false;
    view.onChange((d) => {
      // As JSON, each update is a line of its own: the stream an aggregator consumes.
      if (options.json)
        process.stdout.write(
          `${JSON.stringify({ deviceId: d.deviceId, online: d.online ?? null, reported: d.reported ?? null, ...(d.unreadable ? { unreadable: d.unreadable } : {}) })}\n`,
        );
      else dirty = true;
    });
    const tty = process.stdout.isTTY && !options.json;
    const timer = setInterval(() => {
      if (!dirty) return;
      dirty = false;
      process.stdout.write(tty ? `\x1b[H\x1b[2J${render()}` : render());
    }, 1000);
    await new Promise<void>((resolve) => {
      process.once("SIGINT", resolve);
      process.once("SIGTERM", resolve);
    });
    clearInterval(timer);
    return 0;
  } finally {
    await client.close();
  }
}

function progressPrinter(): (p: RolloutProgress, w: WaveStatus) => void {
  let last = "";
  const reported = new Set<string>();
  const tty = process.stderr.isTTY;
  return (p, w) => {
    const c = w.counts;
    const line = `wave ${p.wave + 1}/${p.waves.length} (${w.percent}%): ${w.devices} device(s): ${c.healthy} healthy, ${c.pending} pending, ${c.failed} failed, ${c.offline} offline`;
    for (const f of w.failures) {
      if (reported.has(f.deviceId)) continue;
      reported.add(f.deviceId);
      process.stderr.write(`${tty ? "\r\x1b[K" : ""}  ${f.deviceId}: ${f.reason}\n`);
    }
    if (tty) process.stderr.write(`\r\x1b[K${line} [${(w.elapsedMs / 1000).toFixed(1)} s]`);
    else if (line !== last) process.stderr.write(`${line} [${(w.elapsedMs / 1000).toFixed(1)} s]\n`);
    last = line;
  };
}

function finish(p: RolloutProgress): number {
  if (process.stderr.isTTY) process.stderr.write("\n");
  process.stdout.write(rolloutLine(p));
  if (p.state === "done") return 0;
  for (const f of p.failures) process.stdout.write(`  ${f.deviceId}: ${f.reason}\n`);
  throw new FleetError(
    p.state === "halted" ? "E_ROLLOUT_HALTED" : "E_ABORTED",
    `rollout of ${p.deployment} to group ${p.group} ${p.state}${p.reason ? `: ${p.reason}` : ""}`,
  );
}

export async function rolloutCommand(argv: string[], configPath: string | undefined): Promise<number> {
  const { options, positionals } = parseArgs(argv, [
    { name: "group", type: "string" },
    { name: "waves", type: "string" },
    { name: "healthy-within", type: "string" },
    { name: "max-failures", type: "string" },
    { name: "sign-key", type: "string" },
    { name: "rollback", type: "boolean" },
  ]);
  const group = options.group as string | undefined;
  if (!group) throw usage("rollout: --group G is needed");
  const key = options["sign-key"] ? loadSigningKey(options["sign-key"] as string) : undefined;
  const sub = positionals[0] === "abort" || positionals[0] === "resume" ? positionals[0] : undefined;
  if (!sub && positionals.length !== 1) throw usage("rollout: expected one FILE (or `abort` / `resume`)");
  if (options.rollback && sub !== "abort") throw usage("rollout: --rollback goes with `rollout abort`");
  // Everything the command line says is checked before the broker is reached.
  const fromFile = sub ? undefined : readDocumentFile(positionals[0]!);
  if (fromFile)
    finishDocument(
      fromFile,
      { generation: typeof fromFile.generation === "number" ? fromFile.generation : 1, target: `group/${group}` },
      { file: positionals[0]! },
    );
  const given = {
    waves: parseWaves((options.waves as string | undefined) ?? "100"),
    healthyWithinMs: parseDuration((options["healthy-within"] as string | undefined) ?? "2m", "--healthy-within"),
    maxFailures: parseFailureLimit((options["max-failures"] as string | undefined) ?? "0"),
  };
  const client = await connect(configPath);
  try {
    const current = await retainedProgress(client, group);
    const groupTopic = client.topics.groupDesired(group);
    if (sub === "abort") {
      if (current?.state !== "running")
        throw new FleetError(
          "E_NOT_FOUND",
          `rollout abort: group ${group} has no running rollout${current ? ` (the last one is ${current.state})` : ""}`,
        );
      if (options.rollback) {
        const raw = await retainedDocument(client, groupTopic);
        if (!raw || raw.deployment !== current.deployment)
          throw new FleetError(
            "E_CONFLICT",
            `rollout abort --rollback: ${groupTopic} no longer holds ${current.deployment}`,
          );
        if (raw.signature && !key)
          throw usage(
            `rollout abort --rollback: ${groupTopic} holds a signed document; give --sign-key, or the devices would refuse the rollback`,
          );
        const { payload } = finishDocument(
          raw,
          {
            generation: current.generation + 1,
            target: `group/${group}`,
            rollout: { percent: current.waves[current.wave]!, rollback: true },
          },
          { file: groupTopic, ...(key ? { key } : {}) },
        );
        await client.publish(groupTopic, payload, { retain: true });
      }
      const aborted: RolloutProgress = {
        ...current,
        state: "aborted",
        reason: `aborted by ${hostname()}${options.rollback ? "; the wave was rolled back" : "; devices keep what they run"}`,
        by: hostname(),
        updatedAt: new Date().toISOString(),
      };
      await client.publish(client.topics.groupRollout(group), JSON.stringify(aborted), {
        retain: true,
      });
      process.stdout.write(rolloutLine(aborted));
      return 0;
    }
    let resume: RolloutProgress | undefined;
    let raw: Record<string, unknown>;
    let file: string;
    if (sub === "resume") {
      if (!current || (current.state !== "running" && current.state !== "aborted"))
        throw new FleetError(
          "E_NOT_FOUND",
          `rollout resume: group ${group} has no interrupted rollout${current ? ` (the last one ${current.state}; start a new one)` : ""}`,
        );
      const retained = await retainedDocument(client, groupTopic);
      if (!retained || retained.deployment !== current.deployment)
        throw new FleetError("E_CONFLICT", `rollout resume: ${groupTopic} no longer holds ${current.deployment}`);
      if ((retained.rollout as { rollback?: unknown } | undefined)?.rollback === true)
        throw new FleetError(
          "E_CONFLICT",
          `rollout resume: the rollout of ${current.deployment} was rolled back; start a new rollout`,
        );
      resume = current;
      raw = retained;
      file = groupTopic;
    } else {
      file = positionals[0]!;
      raw = fromFile!;
      if (current?.state === "running") {
        if (current.deployment !== raw.deployment)
          throw new FleetError(
            "E_CONFLICT",
            `rollout: group ${group} has a rollout of ${current.deployment} under way (wave ${current.wave + 1}/${current.waves.length}, by ${current.by}); abort it first with \`fleetctl rollout abort --group ${group}\``,
          );
        const published = await retainedDocument(client, groupTopic);
        if (!published || sameContent(published) !== sameContent(raw))
          throw new FleetError(
            "E_CONFLICT",
            `rollout: ${file} differs from the ${current.deployment} being rolled out; give the changed document a new deployment name (or abort the rollout first)`,
          );
        resume = current;
        process.stderr.write(
          `resuming the rollout of ${current.deployment} at wave ${current.wave + 1}/${current.waves.length}\n`,
        );
      }
    }
    const { waves, healthyWithinMs, maxFailures } = resume ?? given;
    const generation = resume
      ? resume.generation
      : pickGeneration(raw, await retainedDocument(client, groupTopic), groupTopic);
    if (resume && raw.signature && !key)
      throw usage(
        `rollout: ${groupTopic} holds a signed document; give --sign-key, or the devices would refuse the next wave`,
      );
    finishDocument(raw, { generation, target: `group/${group}` }, { file }); // validate before anything is published
    const view = await FleetView.open(client);
    const devices = view.list(group).length;
    process.stderr.write(
      `rollout of ${String(raw.deployment)} (generation ${generation}) to group ${group}: ${devices} device(s) known, waves ${waves.join(",")}%, healthy within ${healthyWithinMs / 1000} s, ${"count" in maxFailures ? maxFailures.count : `${maxFailures.percent}%`} failure(s) allowed per wave\n`,
    );
    const rollout = new Rollout({
      client,
      view,
      group,
      raw,
      file,
      waves,
      healthyWithinMs,
      maxFailures,
      generation,
      ...(key ? { key } : {}),
      ...(resume ? { resume } : {}),
      onProgress: progressPrinter(),
    });
    return finish(await rollout.run());
  } finally {
    await client.close();
  }
}
