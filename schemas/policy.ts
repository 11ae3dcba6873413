/**
 * The device's own limits on what a desired-state document may ask for: the
 * config's `policy` section (docs/contract.md, "Config reference"). The agent
 * checks every document against it before anything is pulled or started
 * (agent/reconcile/policy.ts) and refuses one that asks for more with
 * E_POLICY, naming the field. Two defaults depend on the rest of the config
 * (`registries`, `requireSigned`), so they are left absent here and worked
 * out by `resolvePolicy` in agent/reconcile/policy.ts.
 */

import { byteQuantity } from "./quantity.js";
import { z } from "./zod.js";

/** What a service gets when its document sets no limit. */
export const DEFAULT_LIMITS = { memory: 256 * 1024 ** 2, pids: 512 } as const;
/** The most a document may ask for. */
export const MAX_LIMITS = { memory: 1024 ** 3, pids: 4096 } as const;
/** The smallest memory limit the runtime accepts (schemas/container.ts). */
const MIN_MEMORY = 4 * 1024 ** 2;

/** `host` or `host:port`, as image references name a registry. */
const registryHost = z
  .string()
  .regex(/^[a-zA-Z0-9.-]+(:\d{1,5})?$/, "expected a registry as image references name it: host or host:port");

/**
 * A glob over host device paths: `/dev/` and then letters, digits, `_`, `.`,
 * `-`, `:` (udev's by-path names), `/`, with `*` and `?` matching within one path component and `[…]` a
 * character class. No `..` and no empty components.
 */
export const devicePattern = z
  .string()
  .regex(/^\/dev\/[a-zA-Z0-9_.:\-/*?[\]]+$/, "expected a glob under /dev/, such as /dev/ttyUSB*")
  .refine((p) => !p.split("/").slice(1).includes(".."), "must not contain '..'")
  .refine((p) => !p.slice(1).split("/").includes(""), "must not contain empty path components")
  .refine((p) => !/\[[^\]]*$|\[\]/.test(p), "has an unclosed or empty [ ] class");

const memory = byteQuantity.refine((v) => v >= MIN_MEMORY, "expected at least 4 MiB");
const pids = z.number().int().min(1);

export const devicePolicy = z
  .object({
    registries: z.array(registryHost).optional(),
    hostNetwork: z.boolean().default(false),
    devices: z.array(devicePattern).default([]),
    requireSigned: z.boolean().optional(),
    defaults: z
      .object({ memory: memory.default(DEFAULT_LIMITS.memory), pids: pids.default(DEFAULT_LIMITS.pids) })
      .default({ ...DEFAULT_LIMITS }),
    max: z
      .object({ memory: memory.default(MAX_LIMITS.memory), pids: pids.default(MAX_LIMITS.pids) })
      .default({ ...MAX_LIMITS }),
  })
  .superRefine((p, ctx) => {
    for (const field of ["memory", "pids"] as const) {
      if (p.defaults[field] > p.max[field])
        ctx.addIssue({
          code: "custom",
          path: ["defaults", field],
          message: `${p.defaults[field]} is above policy.max.${field} (${p.max[field]})`,
        });
    }
  });

export type DevicePolicyConfig = z.output<typeof devicePolicy>;
