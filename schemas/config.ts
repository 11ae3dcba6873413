/**
 * The device config file (`/etc/fleetlet/config.json`). docs/contract.md
 * describes every field; test/unit/docs.test.ts holds it to this schema.
 */

import { devicePolicy } from "./policy.js";
import { byteQuantity } from "./quantity.js";
import { z } from "./zod.js";

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
  username: z.string().optional(),
  password: z.string().optional(),
  ca: z.string().optional(),
  insecure: z.boolean().default(false),
});

export const deviceConfig = z
  .object({
    deviceId: z
      .string()
      .regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/, "expected letters, digits, '_', '.' or '-'")
      .optional(),
    groups: z
      .array(z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/, "expected letters, digits, '_', '.' or '-'"))
      .default([]),
    mqtt: z
      .object({
        url: z.string().regex(/^(mqtts?|wss?):\/\//, "expected mqtt://, mqtts://, ws:// or wss://"),
        ca: z.string().optional(),
        cert: z.string().optional(),
        key: z.string().optional(),
        username: z.string().optional(),
        password: z.string().optional(),
        prefix: z.string().default("fleet"),
        insecure: z.boolean().default(false),
        keepaliveSec: z.number().int().min(5).max(65535).default(DEFAULT_MQTT_KEEPALIVE_SEC),
      })
      .optional(),
    registries: z.record(z.string(), registry).default({}),
    api: z
      .object({
        listen: z.string().default("127.0.0.1:7780"),
        socket: z.string().default("/run/fleetlet/api.sock"),
        token: z.string().optional(),
      })
      .default({ listen: "127.0.0.1:7780", socket: "/run/fleetlet/api.sock" }),
    trustedKeys: z.array(z.string()).default([]),
    pull: z
      .object({
        maxRateBytesPerSec: byteQuantity.default(0),
        concurrency: z.number().int().min(1).max(16).default(3),
      })
      .default({ maxRateBytesPerSec: 0, concurrency: 3 }),
    policy: devicePolicy.default(devicePolicy.parse({})),
    /** The host's device directory: a service's `/dev/…` device path is looked up under it. */
    devRoot: z
      .string()
      .refine((p) => p.startsWith("/"), "expected an absolute path")
      .default(DEFAULT_DEV_ROOT),
    agentUpdate: z
      .object({
        commitWithinMs: z.number().int().min(1000).default(DEFAULT_AGENT_COMMIT_WITHIN_MS),
      })
      .default({ commitWithinMs: DEFAULT_AGENT_COMMIT_WITHIN_MS }),
  })
  .superRefine((config, ctx) => {
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
  });

export type DeviceConfig = z.output<typeof deviceConfig>;
