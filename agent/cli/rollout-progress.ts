/** A rollout's progress as fleetctl reads it from the broker and prints it. */
import { type RolloutProgress, rolloutProgress } from "../../schemas/rollout.js";
import { FleetError } from "../errors.js";
import type { FleetClient } from "../fleet/fleet-client.js";
import type { WaveStatus } from "../fleet/wave-judge.js";
import { ago } from "./output.js";

/** The group's retained progress record; anything unreadable counts as no rollout, with a warning. */
export async function retainedProgress(client: FleetClient, group: string): Promise<RolloutProgress | undefined> {
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

export function rolloutLine(p: RolloutProgress): string {
  const times = p.waveTimesMs.map((ms, i) => `wave ${i + 1} ${(ms / 1000).toFixed(1)} s`).join(", ");
  const counts = Object.entries(p.counts)
    .map(([k, v]) => `${v} ${k}`)
    .join(", ");
  return `rollout of ${p.deployment} (generation ${p.generation}) to group ${p.group}: ${p.state}, wave ${p.wave + 1}/${p.waves.length} (${p.waves[p.wave]}%)${counts ? `: ${counts}` : ""}${times ? `; ${times}` : ""}; by ${p.by}, updated ${ago(p.updatedAt)}${p.reason ? `\n  ${p.reason}` : ""}\n`;
}

/** Prints each wave's counts on stderr (one line kept current on a terminal), and each failed device once. */
export function progressPrinter(): (p: RolloutProgress, w: WaveStatus) => void {
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

/** Prints how the rollout ended: 0 when done, else an error naming the failed devices. */
export function rolloutOutcome(p: RolloutProgress): number {
  if (process.stderr.isTTY) process.stderr.write("\n");
  process.stdout.write(rolloutLine(p));
  if (p.state === "done") return 0;
  for (const f of p.failures) process.stdout.write(`  ${f.deviceId}: ${f.reason}\n`);
  throw new FleetError(
    p.state === "halted" ? "E_ROLLOUT_HALTED" : "E_ABORTED",
    `rollout of ${p.deployment} to group ${p.group} ${p.state}${p.reason ? `: ${p.reason}` : ""}`,
  );
}
