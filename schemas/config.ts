/**
 * The device config file (`/etc/fleetlet/config.json`). docs/contract.md
 * describes every field; test/unit/docs.test.ts holds it to this schema.
 */

import { devicePolicy } from "./policy.js";
import { byteQuantity } from "./quantity.js";
import * as z from "./zod.js";

export { DEFAULT_CONFIG_PATH, DEFAULT_ROOT } from "./default-paths.js";
/** Where host devices are looked up unless the config's `devRoot` or FLEETLET_DEV_ROOT says otherwise. */
export const DEFAULT_DEV_ROOT = "/dev";
/**
 * The agent's MQTT keepalive: one PINGREQ every 4 minutes on an idle link.
 * Over TLS a ping and its answer are 48 bytes of TCP payload, so an idle
 * device costs about 17 KB a day (README, "Idle traffic": measured for
 * 60 to 600 s). Carrier-grade NATs drop idle TCP mappings after 2 to 5
 * minutes, and a dropped mapping costs a reconnect (about 4.4 KB with TLS
 * and a client certificate) and leaves the device deaf until then: 4
 * minutes stays inside the common 5-minute timeouts; set less for a carrier
 * known to time out sooner. A broker may ask for less (MQTT 5's server
 * keepalive).
 */
export const DEFAULT_MQTT_KEEPALIVE_SEC = 240;

/**
 * How long a new agent version must stay up (having adopted the containers,
 * reached the broker and reported the document's generation) before it is
 * committed; the launcher reverts to the previous version otherwise.
 */
export const DEFAULT_AGENT_COMMIT_WITHIN_MS = 120_000;

const registry = z.object({
  username: z.optional(z.string()),
  password: z.optional(z.string()),
  ca: z.optional(z.string()),
  insecure: z._default(z.boolean(), false),
});

/** A device id or group name: one safe MQTT topic level (the inventory holds names to it too). */
export const FLEET_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;
const fleetName = () => z.string().check(z.regex(FLEET_NAME, "expected letters, digits, '_', '.' or '-'"));

export const deviceConfig = z
  .object({
    deviceId: z.optional(fleetName()),
    groups: z._default(z.array(fleetName()), []),
    mqtt: z.optional(
      z.object({
        url: z.string().check(z.regex(/^(mqtts?|wss?):\/\//, "expected mqtt://, mqtts://, ws:// or wss://")),
        ca: z.optional(z.string()),
        cert: z.optional(z.string()),
        key: z.optional(z.string()),
        username: z.optional(z.string()),
        password: z.optional(z.string()),
        prefix: z._default(z.string(), "fleet"),
        insecure: z._default(z.boolean(), false),
        keepaliveSec: z._default(z.number().check(z.int(), z.minimum(5), z.maximum(65535)), DEFAULT_MQTT_KEEPALIVE_SEC),
      }),
    ),
    registries: z._default(z.record(z.string(), registry), {}),
    api: z._default(
      z.object({
        listen: z._default(z.string(), "127.0.0.1:7780"),
        socket: z._default(z.string(), "/run/fleetlet/api.sock"),
        token: z.optional(z.string()),
      }),
      { listen: "127.0.0.1:7780", socket: "/run/fleetlet/api.sock" },
    ),
    trustedKeys: z._default(z.array(z.string()), []),
    pull: z._default(
      z.object({
        maxRateBytesPerSec: z._default(byteQuantity, 0),
        concurrency: z._default(z.number().check(z.int(), z.minimum(1), z.maximum(16)), 3),
      }),
      { maxRateBytesPerSec: 0, concurrency: 3 },
    ),
    policy: z._default(devicePolicy, devicePolicy.parse({})),
    /** The host's device directory: a service's `/dev/…` device path is looked up under it. */
    devRoot: z._default(
      z.string().check(z.refine((p) => p.startsWith("/"), "expected an absolute path")),
      DEFAULT_DEV_ROOT,
    ),
    agentUpdate: z._default(
      z.object({
        commitWithinMs: z._default(z.number().check(z.int(), z.minimum(1000)), DEFAULT_AGENT_COMMIT_WITHIN_MS),
      }),
      { commitWithinMs: DEFAULT_AGENT_COMMIT_WITHIN_MS },
    ),
  })
  .check(
    z.superRefine((config, ctx) => {
      // Turning a protection off is a named setting, never what a URL happens to say.
      if (config.mqtt && /^(mqtt|ws):/.test(config.mqtt.url) && !config.mqtt.insecure)
        ctx.addIssue({
          code: "custom",
          path: ["mqtt", "url"],
          message:
            "plaintext MQTT is refused: use mqtts:// or wss://, or set mqtt.insecure to true for a broker on a trusted network",
        });
      if (config.policy.requireSigned === true && config.trustedKeys.length === 0)
        ctx.addIssue({
          code: "custom",
          path: ["policy", "requireSigned"],
          message: "true needs at least one key in trustedKeys (no document could be accepted)",
        });
    }),
  );

export type DeviceConfig = z.output<typeof deviceConfig>;
