/**
 * Rollout waves, as the agent and fleetctl both read them: a device is in the
 * wave of a group document when a stable hash of (deviceId, deployment) falls
 * below `rollout.percent`. Raising the percent only adds devices.
 */
import { createHash } from "node:crypto";

/** Where a device falls for a deployment, in [0, 100): the first 32 bits of sha256(deviceId NUL deployment) as a percentage. */
export function wavePosition(deviceId: string, deployment: string): number {
  const h = createHash("sha256").update(`${deviceId}\0${deployment}`).digest().readUInt32BE(0);
  return (h / 0x1_0000_0000) * 100;
}

/** A device is in a rollout wave when its position falls below the percent. */
export function inRolloutWave(deviceId: string, deployment: string, percent: number): boolean {
  return wavePosition(deviceId, deployment) < percent;
}
