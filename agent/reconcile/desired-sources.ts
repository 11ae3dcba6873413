/**
 * Which desired document an agent applies when several topics hold one: the
 * device's own wins over its groups', and among groups the first in the
 * config's order. Moved out of cli/agent-daemon.ts so the daemon and the
 * fleet simulation wire their agents the same way.
 */
import { FleetError } from "../errors.js";
import type { Agent } from "./agent.js";

/** The documents last received per source; the device's own wins over its groups'. */
export class DesiredSources {
  private device: Buffer | undefined;
  private readonly groups = new Map<string, Buffer>();
  private lastSubmitted: string | undefined;

  constructor(private readonly groupOrder: string[]) {}

  set(kind: "device" | "group", name: string, payload: Buffer): void {
    const value = payload.length ? payload : undefined;
    if (kind === "device") this.device = value;
    else if (value) this.groups.set(name, value);
    else this.groups.delete(name);
  }

  /** The document to apply now, if it differs from the last one submitted. */
  next(): { payload: Buffer; source: string; group?: string } | undefined {
    let pick: { payload: Buffer; source: string; group?: string } | undefined;
    if (this.device) pick = { payload: this.device, source: "device" };
    else {
      const group = this.groupOrder.find((g) => this.groups.has(g));
      if (group) pick = { payload: this.groups.get(group)!, source: `group ${group}`, group };
    }
    if (!pick || pick.payload.toString() === this.lastSubmitted) return undefined;
    this.lastSubmitted = pick.payload.toString();
    return pick;
  }
}

/** The MqttSession's `onDesired` for an agent: records the message, submits the winning document when it changed. */
export function desiredHandler(
  agent: Pick<Agent, "submit" | "reject">,
  groups: string[],
  prefix: string,
): (source: { kind: "device" | "group"; name: string }, payload: Buffer) => void {
  const sources = new DesiredSources(groups);
  return (source, payload) => {
    sources.set(source.kind, source.name, payload);
    const next = sources.next();
    if (!next) return;
    agent
      .submit(next.payload, `${prefix} ${next.source} desired`, {
        fromTopic: true,
        ...(next.group !== undefined ? { group: next.group } : {}),
      })
      .catch((err: Error) => {
        // The document could not even be recorded (db.json unwritable): say so, keep serving.
        agent.reject(err instanceof FleetError ? err : new FleetError("E_RUNTIME", err.message));
      });
  };
}
