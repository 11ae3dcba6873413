/**
 * A staged rollout to a group: one retained, signed group document per wave
 * (the broker fans it out), waves widened only once the devices in the current
 * one are healthy, and the wave rolled back when its failures pass the limit.
 * Progress is kept retained on `<prefix>/groups/<group>/rollout`.
 */
import type { KeyObject } from "node:crypto";
import { hostname } from "node:os";
import type { FailureLimit, RolloutProgress } from "../../schemas/rollout.js";
import { rolloutProgress } from "../../schemas/rollout.js";
import { FleetError } from "../errors.js";
import { finishDocument, type RawDocument } from "./desired-document.js";
import type { FleetClient } from "./fleet-client.js";
import type { FleetView } from "./fleet-view.js";
import { failureAllowance, judgeWave, type Target, type WaveStatus } from "./wave-judge.js";

export interface RolloutOptions {
  client: FleetClient;
  view: FleetView;
  group: string;
  /** The document as the operator wrote it (its generation, rollout and signature are set here). */
  raw: RawDocument;
  file: string;
  waves: number[];
  healthyWithinMs: number;
  maxFailures: FailureLimit;
  generation: number;
  key?: KeyObject;
  /** Each wave's document (and a rollback) gets notAfter = its publication + this; without it, the document's own notAfter stays. */
  validForMs?: number;
  /** Progress of an interrupted rollout of the same deployment: carries on at its wave. */
  resume?: RolloutProgress;
  onProgress?: (p: RolloutProgress, wave: WaveStatus) => void;
  /** How often the wave is judged; default 200 ms. */
  tickMs?: number;
  /** Rolls out to a group no known device belongs to (for devices that join later); refused otherwise. */
  allowEmpty?: boolean;
}

/** Refuses a group that no device's reported state names: most likely a misspelling, and every wave would pass at once. */
export function refuseEmptyGroup(view: FleetView, group: string): void {
  if (!view.members(group).next().done) return;
  throw new FleetError(
    "E_EMPTY_GROUP",
    `group ${group} has no known device: no device reports being in it, so every wave would pass at once with nobody updated; check the group's name (\`fleetctl status\` lists the devices), or give --allow-empty to roll out to devices that join it later`,
    { exitCode: 2 },
  );
}

/** Another fleetctl's abort of this deployment, heard on the progress topic. */
interface AbortListener {
  abortedBy(): string | undefined;
  stop(): void;
}

export class Rollout {
  progress: RolloutProgress;
  private lastPublished = 0;
  /** Each device's wave position for this deployment, hashed once rather than every tick. */
  private readonly positions = new Map<string, number>();

  /** Throws E_EMPTY_GROUP (unless `allowEmpty`) when the view knows no device of the group. */
  constructor(private readonly o: RolloutOptions) {
    if (!o.allowEmpty) refuseEmptyGroup(o.view, o.group);
    const now = new Date().toISOString();
    const deployment = String(o.raw.deployment);
    this.progress = o.resume
      ? { ...o.resume, state: "running", by: hostname(), updatedAt: now }
      : {
          apiVersion: "fleetlet/v1",
          kind: "rollout",
          group: o.group,
          deployment,
          generation: o.generation,
          waves: o.waves,
          healthyWithinMs: o.healthyWithinMs,
          maxFailures: o.maxFailures,
          state: "running",
          wave: 0,
          waveStartedAt: now,
          waveTimesMs: [],
          counts: {},
          failures: [],
          by: hostname(),
          startedAt: now,
          updatedAt: now,
        };
  }

  private get topic(): string {
    return this.o.client.topics.groupRollout(this.o.group);
  }

  private async saveProgress(force: boolean): Promise<void> {
    if (!force && Date.now() - this.lastPublished < 1000) return;
    this.lastPublished = Date.now();
    this.progress.updatedAt = new Date().toISOString();
    await this.o.client.publish(this.topic, JSON.stringify(this.progress), { retain: true });
  }

  private publishWave(percent: number, rollback = false, generation = this.progress.generation): Promise<void> {
    const { payload } = finishDocument(
      this.o.raw,
      {
        generation,
        target: `group/${this.o.group}`,
        rollout: { percent, ...(rollback ? { rollback } : {}) },
        ...(this.o.validForMs !== undefined ? { validForMs: this.o.validForMs } : {}),
      },
      { file: this.o.file, ...(this.o.key ? { key: this.o.key } : {}) },
    );
    return this.o.client.publish(this.o.client.topics.groupDesired(this.o.group), payload, { retain: true });
  }

  /** Drives the waves; resolves with the final progress (state done, halted or aborted). */
  async run(): Promise<RolloutProgress> {
    const abort = await this.listenForAbort();
    try {
      for (let i = this.progress.wave; i < this.progress.waves.length; i++) {
        const ended = await this.runWave(i, abort);
        if (ended) return ended;
      }
      this.progress.state = "done";
      return this.progress;
    } finally {
      abort.stop();
      if (this.progress.state === "running") this.progress.state = "aborted"; // an exception: say the rollout stopped
      await this.saveProgress(true).catch((err: Error) =>
        process.stderr.write(`fleetctl: could not record the rollout's progress: ${err.message}\n`),
      );
    }
  }

  /** Subscribes to the progress topic; an abort retained before now (our own record, or one being resumed from) does not count. */
  private async listenForAbort(): Promise<AbortListener> {
    const { client } = this.o;
    let abortedBy: string | undefined;
    const off = client.onMessage((topic, payload) => {
      if (topic !== this.topic || !payload.length) return;
      let p: ReturnType<typeof rolloutProgress.safeParse>;
      try {
        p = rolloutProgress.safeParse(JSON.parse(payload.toString()));
      } catch {
        return; // not JSON: not an abort; our next progress record replaces it
      }
      if (p.success && p.data.state === "aborted" && p.data.deployment === this.progress.deployment)
        abortedBy = p.data.by;
    });
    try {
      await client.subscribe([this.topic]);
      await client.fence();
    } catch (err) {
      off();
      throw err;
    }
    abortedBy = undefined;
    return { abortedBy: () => abortedBy, stop: off };
  }

  /** Publishes wave `i` and judges it until it is done (undefined) or the rollout ends (its final progress). */
  private async runWave(i: number, abort: AbortListener): Promise<RolloutProgress | undefined> {
    const percent = this.progress.waves[i]!;
    // A resumed wave gets a fresh health window: the devices were not idle while fleetctl was away.
    this.progress.waveStartedAt = new Date().toISOString();
    this.progress.wave = i;
    const target: Target = {
      deployment: this.progress.deployment,
      generation: this.progress.generation,
      publishedAt: Date.now(),
    };
    await this.publishWave(percent);
    await this.saveProgress(true);
    const started = Date.parse(this.progress.waveStartedAt);
    for (;;) {
      const by = abort.abortedBy();
      if (by !== undefined) {
        this.progress.state = "aborted";
        this.progress.reason = `aborted by ${by}`;
        return this.progress;
      }
      const { verdict, status } = this.judge(target, percent, Date.now() - started);
      if (verdict === "halt") return await this.halt(percent, status);
      if (verdict === "done") break;
      await this.saveProgress(false);
      await new Promise((r) => setTimeout(r, this.o.tickMs ?? 200));
    }
    this.progress.waveTimesMs[i] = Date.now() - started;
    return undefined;
  }

  /** Judges the wave from the view as it stands, and records and reports the counts. */
  private judge(target: Target, percent: number, elapsedMs: number): ReturnType<typeof judgeWave> {
    const judged = judgeWave(
      this.o.view.members(this.o.group),
      target,
      percent,
      this.progress.maxFailures,
      elapsedMs,
      this.progress.healthyWithinMs,
      this.positions,
    );
    this.progress.counts = { ...judged.status.counts };
    this.progress.failures = judged.status.failures;
    this.o.onProgress?.(this.progress, judged.status);
    return judged;
  }

  /** Too many failures: the devices in this wave restore what ran before. */
  private async halt(percent: number, status: WaveStatus): Promise<RolloutProgress> {
    const limit = failureAllowance(this.progress.maxFailures, status.devices);
    this.progress.state = "halted";
    this.progress.reason = `${status.counts.failed} of ${status.devices} device(s) in wave ${this.progress.wave + 1} (${percent}%) failed, more than the ${limit} allowed; the wave was rolled back`;
    await this.publishWave(percent, true, this.progress.generation + 1);
    await this.saveProgress(true);
    return this.progress;
  }
}

/** "5,25,100" → [5, 25, 100]: increasing percentages ending at 100 or below. */
export function parseWaves(text: string): number[] {
  const waves = text.split(",").map((s) => Number(s.trim()));
  if (!waves.length || waves.some((w) => !Number.isFinite(w) || w <= 0 || w > 100))
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `--waves ${text}: expected percentages between 1 and 100, e.g. 5,25,100`,
      { exitCode: 2 },
    );
  if (waves.some((w, i) => i > 0 && w <= waves[i - 1]!))
    throw new FleetError("E_INVALID_ARGUMENT", `--waves ${text}: each wave must be wider than the one before`, {
      exitCode: 2,
    });
  return waves;
}

/** "10%" → {percent: 10}; "3" → {count: 3}. */
export function parseFailureLimit(text: string): FailureLimit {
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(text.trim());
  if (!m || (m[2] && Number(m[1]) > 100) || (!m[2] && !Number.isInteger(Number(m[1]))))
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `--max-failures ${text}: expected a count (3) or a percentage of the wave (10%)`,
      { exitCode: 2 },
    );
  return m[2] ? { percent: Number(m[1]) } : { count: Number(m[1]) };
}

/** "2m", "90s", "1500ms", "1h" → milliseconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (!m)
    throw new FleetError("E_INVALID_ARGUMENT", `${what} ${text}: expected a duration such as 90s, 2m, 1h or 7d`, {
      exitCode: 2,
    });
  const ms = Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "ms"];
  if (ms <= 0) throw new FleetError("E_INVALID_ARGUMENT", `${what} ${text}: must be longer than zero`, { exitCode: 2 });
  return Math.round(ms);
}
