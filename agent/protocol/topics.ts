/**
 * The MQTT topic names (docs/contract.md), built from one prefix (default `fleet`):
 *   <prefix>/devices/<id>/{desired,reported,status,events}
 *   <prefix>/groups/<group>/desired
 *   <prefix>/groups/<group>/rollout      a rollout's retained progress (operators)
 *   <prefix>/operators/<client id>/fence an operator's echo to itself
 * The agent, fleetctl and the ACL generator all build their topics here, so
 * they can never disagree on a spelling.
 */
import { FleetError } from "../errors.js";

export const DEFAULT_TOPIC_PREFIX = "fleet";

export type DeviceChannel = "desired" | "reported" | "status" | "events";

/** What a concrete topic names, as `parse` reads it back. */
export type ParsedTopic =
  | { kind: "device"; name: string; channel: DeviceChannel }
  | { kind: "group"; name: string; channel: "desired" };

export interface TopicNames {
  readonly prefix: string;
  device(deviceId: string, channel: DeviceChannel): string;
  groupDesired(group: string): string;
  /** A group rollout's retained progress, written by fleetctl. */
  groupRollout(group: string): string;
  /** A filter over every group's `channel`, for the ACL. */
  anyGroup(channel: "desired" | "rollout"): string;
  /** An operator's fence: fleetctl publishes to it and waits for the echo. */
  operatorFence(clientId: string): string;
  /** A filter over every operator's topics, for the ACL. */
  anyOperator(): string;
  /** A filter over every device's `channel` (`<prefix>/devices/+/<channel>`), for the operator side. */
  anyDevice(channel: DeviceChannel): string;
  /** The device or group a topic belongs to, or undefined for a topic outside this prefix's scheme. */
  parse(topic: string): ParsedTopic | undefined;
}

const CHANNELS: readonly DeviceChannel[] = ["desired", "reported", "status", "events"];

/** One topic level: a device id or group name must not add levels or wildcards. */
function checkLevel(what: string, value: string): string {
  if (value === "" || /[/+#\u0000]/.test(value)) {
    throw new FleetError(
      "E_INVALID_CONFIG",
      `${what} ${JSON.stringify(value)} cannot be used in an MQTT topic: it must be non-empty and hold no '/', '+', '#' or NUL`,
    );
  }
  return value;
}

function checkPrefix(prefix: string): string {
  // The prefix may span levels ("acme/fleet") but must be a plain topic name.
  if (
    prefix === "" ||
    /[+#\u0000]/.test(prefix) ||
    prefix.startsWith("/") ||
    prefix.endsWith("/") ||
    prefix.includes("//")
  ) {
    throw new FleetError(
      "E_INVALID_CONFIG",
      `mqtt.prefix ${JSON.stringify(prefix)}: expected topic levels such as "fleet" or "acme/fleet" (no wildcards, no empty levels)`,
    );
  }
  return prefix;
}

export function topicNames(prefix: string = DEFAULT_TOPIC_PREFIX): TopicNames {
  const p = checkPrefix(prefix);
  const prefixLevels = p.split("/").length;
  return {
    prefix: p,
    device: (deviceId, channel) => `${p}/devices/${checkLevel("device id", deviceId)}/${channel}`,
    groupDesired: (group) => `${p}/groups/${checkLevel("group", group)}/desired`,
    groupRollout: (group) => `${p}/groups/${checkLevel("group", group)}/rollout`,
    anyGroup: (channel) => `${p}/groups/+/${channel}`,
    operatorFence: (clientId) => `${p}/operators/${checkLevel("client id", clientId)}/fence`,
    anyOperator: () => `${p}/operators/#`,
    anyDevice: (channel) => `${p}/devices/+/${channel}`,
    parse(topic) {
      if (!topic.startsWith(`${p}/`)) return undefined;
      const rest = topic.split("/").slice(prefixLevels);
      if (rest.length !== 3 || !rest[1]) return undefined;
      const [kind, name, channel] = rest as [string, string, string];
      if (kind === "groups" && channel === "desired") return { kind: "group", name, channel };
      if (kind === "devices" && (CHANNELS as readonly string[]).includes(channel))
        return { kind: "device", name, channel: channel as DeviceChannel };
      return undefined;
    },
  };
}
