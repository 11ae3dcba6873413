/**
 * Judging one wave of a rollout: where each device in it stands (healthy,
 * pending, failed or offline, from its retained reported and status
 * messages), and whether the wave is done, still going, or failed past the
 * limit.
 */
import type { FailureLimit, RolloutFailure } from "../../schemas/rollout.js";
import { wavePosition } from "../protocol/waves.js";
import type { DeviceView } from "./fleet-view.js";

export type Standing = "healthy" | "pending" | "failed" | "offline";
export interface Target {
  deployment: string;
  generation: number;
  /** When the wave's document went out (local clock): a rejection seen after it is this document's. */
  publishedAt: number;
}

/** Where one device stands in a wave, with the reason when it failed or is not there yet. */
export function standing(d: DeviceView, t: Target): { standing: Standing; reason: string } {
  const r = d.reported;
  if (r && r.deployment === t.deployment && r.generation !== null && r.generation >= t.generation) {
    if (r.phase === "failed" || r.phase === "rolledBack")
      return { standing: "failed", reason: `${r.phase}: ${r.lastError?.message ?? "no reason given"}` };
    if (r.phase === "converged" && r.lastGood === t.deployment) return { standing: "healthy", reason: "" };
  }
  if (r?.phase === "rejected" && d.seenAt >= t.publishedAt)
    return {
      standing: "failed",
      reason: `rejected: ${r.lastError ? `${r.lastError.code}: ${r.lastError.message}` : "no reason given"}`,
    };
  if (d.online === false) return { standing: "offline", reason: "offline" };
  if (!r) return { standing: "pending", reason: "has not reported yet" };
  return {
    standing: "pending",
    reason:
      r.deployment === t.deployment
        ? `${r.phase}${r.phase === "converged" ? " (in its health window)" : ""}`
        : `runs ${r.deployment ?? "nothing"} (${r.phase})`,
  };
}

export function failureAllowance(limit: FailureLimit, devices: number): number {
  return "count" in limit ? limit.count : Math.floor((devices * limit.percent) / 100);
}

export interface WaveStatus {
  percent: number;
  devices: number;
  counts: Record<Standing, number>;
  failures: RolloutFailure[];
  elapsedMs: number;
}

/** Judges a wave: done, halted (too many failures) or still going; past the deadline, the pending count as failed. */
export function judgeWave(
  devices: Iterable<DeviceView>,
  t: Target,
  percent: number,
  limit: FailureLimit,
  elapsedMs: number,
  healthyWithinMs: number,
  positions?: Map<string, number>,
): { verdict: "done" | "halt" | "wait"; status: WaveStatus } {
  const position = (id: string) => {
    let p = positions?.get(id);
    if (p === undefined) {
      p = wavePosition(id, t.deployment);
      positions?.set(id, p);
    }
    return p;
  };
  // A device following its own document does not take the group's: it is not part of any wave.
  const inWave = [...devices].filter((d) => d.reported?.source !== "device" && position(d.deviceId) < percent);
  const counts: Record<Standing, number> = { healthy: 0, pending: 0, failed: 0, offline: 0 };
  const failures: RolloutFailure[] = [];
  const late = elapsedMs > healthyWithinMs;
  for (const d of inWave) {
    let s = standing(d, t);
    if (late && s.standing === "pending")
      s = { standing: "failed", reason: `not healthy within ${Math.round(healthyWithinMs / 1000)} s: ${s.reason}` };
    counts[s.standing]++;
    if (s.standing === "failed")
      failures.push({ deviceId: d.deviceId, phase: d.reported?.phase ?? "unknown", reason: s.reason });
  }
  const status = { percent, devices: inWave.length, counts, failures, elapsedMs };
  if (counts.failed > failureAllowance(limit, inWave.length)) return { verdict: "halt", status };
  return { verdict: counts.pending === 0 ? "done" : "wait", status };
}
