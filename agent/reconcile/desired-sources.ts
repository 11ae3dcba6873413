/**
 * Which desired document an agent applies when several topics hold one: the
 * device's own wins over its groups', and among groups the first in the
 * config's order. Only a message the agent admits (signature, schema, target,
 * expiry and policy pass, and it is no replay) takes its topic's place, so a
 * forged message on the device's own topic cannot shut its groups out; an
 * empty message clears a topic only on a device that does not require
 * signatures. Moved out of cli/agent-daemon.ts so the daemon and the fleet
 * simulation wire their agents the same way.
 */
import { FleetError } from "../errors.js";
import type { Agent } from "./agent.js";

/** The documents last received per source; the device's own wins over its groups'. */
export class DesiredSources {
  private device: Buffer | undefined;
  private readonly groups = new Map<string, Buffer>();
  private lastSubmitted: string | undefined;

  constructor(private readonly groupOrder: string[]) {}

  /** Records a topic's document; an empty payload clears the topic. */
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

/** The MqttSession's `onDesired` for an agent: admits the message, records it, submits the winning document when it changed. */
export function desiredHandler(
  agent: Pick<Agent, "submit" | "reject" | "admit" | "requiresSignatures">,
  groups: string[],
  prefix: string,
): (source: { kind: "device" | "group"; name: string }, payload: Buffer) => void {
  const sources = new DesiredSources(groups);
  return (source, payload) => {
    const label = `${prefix} ${source.kind === "device" ? "device" : `group ${source.name}`} desired`;
    const group = source.kind === "group" ? { group: source.name } : {};
    if (!payload.length && agent.requiresSignatures) {
      // Anyone able to publish could otherwise hand the device from one signed document to another.
      agent.reject(
        new FleetError(
          "E_BAD_SIGNATURE",
          `${label}: an empty message cannot clear the topic on a device that requires signed documents; it keeps following what it follows`,
        ),
      );
      return;
    }
    if (payload.length && !agent.admit(payload, label, group)) return;
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
