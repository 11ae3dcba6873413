/**
 * The operator's picture of the fleet: every device's retained reported
 * state and online status, kept current from the broker. `fleetctl status`
 * prints it; a rollout judges its waves by it.
 */
import { type ReportedState, reportedState } from "../../schemas/reported.js";
import type { FleetClient } from "./fleet-client.js";

export interface DeviceView {
  deviceId: string;
  online: boolean | undefined;
  reported: ReportedState | undefined;
  /** When the latest reported or status message arrived here (ms since the epoch). */
  seenAt: number;
  /** A reported message that did not parse: said in the table, never dropped silently. */
  unreadable?: string;
}

export class FleetView {
  readonly devices = new Map<string, DeviceView>();
  private readonly listeners = new Set<(d: DeviceView) => void>();
  private readonly lastText = new Map<string, { reported: string; status: string }>();
  messages = 0;
  bytes = 0;

  private constructor() {}

  /** Subscribes and resolves once the retained state of every device is in. `share` names an MQTT 5 shared subscription group for live updates. */
  static async open(client: FleetClient, opts: { share?: string } = {}): Promise<FleetView> {
    const view = new FleetView();
    const { topics } = client;
    client.onMessage((topic, payload) => {
      const t = topics.parse(topic);
      if (t?.kind !== "device" || (t.channel !== "reported" && t.channel !== "status")) return;
      view.messages++;
      view.bytes += payload.length;
      view.take(t.name, t.channel, payload);
    });
    const filters = [topics.anyDevice("reported"), topics.anyDevice("status")];
    // MQTT 5 sends no retained messages to a shared subscription (mosquitto 2.0 does,
    // and they are dropped as repeats), so the snapshot comes from a plain one first;
    // the live stream is then split between the sharing instances.
    await client.subscribe(filters);
    await client.fence();
    if (opts.share) {
      await client.unsubscribe(filters);
      await client.subscribe(filters.map((f) => `$share/${opts.share}/${f}`));
    }
    return view;
  }

  onChange(listener: (d: DeviceView) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private take(deviceId: string, channel: "reported" | "status", payload: Buffer): void {
    let d = this.devices.get(deviceId);
    if (!payload.length) {
      // A cleared retained message: the device was deregistered.
      if (d && channel === "reported") {
        this.devices.delete(deviceId);
        this.lastText.delete(deviceId);
      }
      return;
    }
    if (!d) {
      d = { deviceId, online: undefined, reported: undefined, seenAt: 0 };
      this.devices.set(deviceId, d);
    }
    // The same message again (mosquitto resends retained messages to a new shared subscription): not an update.
    const text = payload.toString();
    const last = this.lastText.get(deviceId) ?? { reported: "", status: "" };
    if (last[channel] === text) return;
    last[channel] = text;
    this.lastText.set(deviceId, last);
    d.seenAt = Date.now();
    try {
      const doc = JSON.parse(text) as unknown;
      if (channel === "status") d.online = (doc as { online?: unknown }).online === true;
      else {
        const parsed = reportedState.safeParse(doc);
        if (parsed.success) {
          d.reported = parsed.data;
          delete d.unreadable;
        } else
          d.unreadable = `reported state does not match the schema: ${parsed.error.issues[0]?.path.join(".")}: ${parsed.error.issues[0]?.message}`;
      }
    } catch (err) {
      d.unreadable = `${channel} is not JSON: ${(err as Error).message}`;
    }
    for (const l of this.listeners) l(d);
  }

  /** The devices of `group` (as their reported state names their groups), or all of them, in no particular order. */
  *members(group?: string): Generator<DeviceView> {
    for (const d of this.devices.values()) if (!group || d.reported?.groups?.includes(group)) yield d;
  }

  /** The same, sorted by device id, for a table. */
  list(group?: string): DeviceView[] {
    return [...this.members(group)].sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
  }
}
