/** The reported-state document an agent publishes and serves (docs/contract.md). */

import { devicePresence } from "./device.js";
import * as z from "./zod.js";

export const PHASES = ["idle", "pulling", "applying", "converged", "failed", "rolledBack", "rejected"] as const;

export const serviceReport = z.object({
  image: z.string(),
  digest: z.optional(z.string()),
  state: z.enum([
    "pending",
    "pulling",
    "starting",
    "waitingForDevice",
    "running",
    "restarting",
    "exited",
    "stopped",
    "failed",
  ]),
  /** While `waitingForDevice`: the device paths (as the document names them) that are absent. */
  waitingFor: z.optional(z.array(z.string())),
  /** A running service's host devices, and whether each is there now (unplugged: its node is gone from the container). */
  devices: z.optional(z.array(devicePresence)),
  pid: z.optional(z.number().check(z.int())),
  restarts: z.number().check(z.int(), z.nonnegative()),
  health: z.enum(["healthy", "unhealthy", "starting", "none"]),
  memoryBytes: z.number().check(z.nonnegative()),
  cpuSeconds: z.number().check(z.nonnegative()),
  exitCode: z.optional(z.number().check(z.int())),
  startedAt: z.optional(z.string()),
});
export type ServiceReport = z.infer<typeof serviceReport>;

/**
 * The document the device last accepted from a topic, and what it could tell
 * of its freshness. `previousGeneration: null` means the device had accepted
 * nothing from that topic before (a new or a reset device): it took whatever
 * the topic held, however old, so its `notAfter` is the only bound on age.
 */
export const acceptedDocument = z.object({
  deployment: z.string(),
  generation: z.number().check(z.int()),
  source: z.string(),
  /** When the device accepted it (RFC 3339). */
  at: z.string(),
  signed: z.boolean(),
  notAfter: z.nullable(z.string()),
  previousGeneration: z.nullable(z.number().check(z.int())),
});
export type AcceptedDocument = z.infer<typeof acceptedDocument>;

export const reportedState = z.object({
  deviceId: z.string(),
  deployment: z.nullable(z.string()),
  generation: z.nullable(z.number().check(z.int())),
  phase: z.enum(PHASES),
  /** The deployment that last passed its health window on this device (a rollout counts a device healthy by it). */
  lastGood: z.optional(z.nullable(z.string())),
  /** Which document the device follows: "device" (its own, which wins) or "group:<name>". */
  source: z.optional(z.nullable(z.string())),
  /** The device's groups, so the operator side can tell a group's devices apart. */
  groups: z.optional(z.array(z.string())),
  services: z.record(z.string(), serviceReport),
  lastError: z.nullable(z.object({ code: z.string(), message: z.string() })),
  /** The last document accepted; null before the first. */
  lastAccepted: z.optional(z.nullable(acceptedDocument)),
  agent: z.object({ version: z.string(), uptimeSec: z.number(), cgroupMode: z.string() }),
  ts: z.string(),
});
export type ReportedState = z.infer<typeof reportedState>;

/** Figures for /metrics beyond what the reported state holds. */
export interface AgentMetrics {
  pullBytesTotal: number;
  applyDurationsMs: number[];
  appliesTotal: number;
  rollbacksTotal: number;
}
