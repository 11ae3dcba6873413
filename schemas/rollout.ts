/**
 * A staged rollout's progress, kept retained on `<prefix>/groups/<group>/rollout`
 * so that a restarted fleetctl picks the rollout up and every operator sees it.
 */
import * as z from "./zod.js";

export const failureLimit = z.union([
  z.object({ percent: z.number().check(z.minimum(0), z.maximum(100)) }),
  z.object({ count: z.number().check(z.int(), z.nonnegative()) }),
]);
export type FailureLimit = z.infer<typeof failureLimit>;

export const rolloutFailure = z.object({ deviceId: z.string(), phase: z.string(), reason: z.string() });
export type RolloutFailure = z.infer<typeof rolloutFailure>;

export const rolloutProgress = z.object({
  apiVersion: z.literal("fleetlet/v1"),
  kind: z.literal("rollout"),
  group: z.string(),
  deployment: z.string(),
  generation: z.number().check(z.int(), z.nonnegative()),
  waves: z.array(z.number().check(z.minimum(0), z.maximum(100))).check(z.minLength(1)),
  healthyWithinMs: z.number().check(z.int(), z.positive()),
  maxFailures: failureLimit,
  /** running: a fleetctl drives it; done: every wave healthy; halted: failures passed the limit and the wave was rolled back; aborted: an operator stopped it. */
  state: z.enum(["running", "done", "halted", "aborted"]),
  /** Index into `waves` of the wave under way (or the last one, once finished). */
  wave: z.number().check(z.int(), z.nonnegative()),
  waveStartedAt: z.string(),
  waveTimesMs: z.array(z.number().check(z.nonnegative())),
  counts: z.record(z.string(), z.number().check(z.int(), z.nonnegative())),
  failures: z.array(rolloutFailure),
  reason: z.optional(z.string()),
  by: z.string(),
  startedAt: z.string(),
  updatedAt: z.string(),
});
export type RolloutProgress = z.infer<typeof rolloutProgress>;
