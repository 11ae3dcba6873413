/**
 * The protections a device config turns off. Each one is off only by a named
 * setting, never by default, and the agent says so once at start (on stderr
 * and as a `warning` event), so that a relaxed device is visible from the
 * fleet side too.
 */
import type { DeviceConfig } from "../../schemas/config.js";

export interface RelaxedSetting {
  /** The config field that turned the protection off. */
  field: string;
  message: string;
}

/** What `config` turns off; `requireSigned` is the policy's, with its default worked out. */
export function relaxedSettings(config: DeviceConfig, policy: { requireSigned: boolean }): RelaxedSetting[] {
  const out: RelaxedSetting[] = [];
  const { mqtt } = config;
  if (mqtt && /^(mqtt|ws):/.test(mqtt.url))
    out.push({
      field: "mqtt.insecure",
      message: `the link to the broker is plaintext (${mqtt.url.slice(0, mqtt.url.indexOf(":"))}://): desired state, reported state and credentials cross it unencrypted`,
    });
  if (mqtt && !policy.requireSigned)
    out.push({
      field: "policy.requireSigned",
      message:
        "desired-state documents are accepted unsigned (trustedKeys is empty or policy.requireSigned is false): whoever can publish to this device's desired topics decides what it runs",
    });
  if (config.policy.hostNetwork)
    out.push({ field: "policy.hostNetwork", message: "documents may run services on the host's network" });
  if (config.policy.devices.length)
    out.push({
      field: "policy.devices",
      message: `documents may be given the host devices ${config.policy.devices.join(", ")}`,
    });
  for (const [host, registry] of Object.entries(config.registries))
    if (registry.insecure)
      out.push({
        field: `registries.${host}.insecure`,
        message: `images from ${host} come over plain HTTP (their digests are still checked)`,
      });
  return out;
}
