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
import * as z from "./zod.js";

/** What a service gets when its document sets no limit. */
export const DEFAULT_LIMITS = { memory: 256 * 1024 ** 2, pids: 512 } as const;
/** The most a document may ask for. */
export const MAX_LIMITS = { memory: 1024 ** 3, pids: 4096 } as const;
/** The smallest memory limit the runtime accepts (schemas/container.ts). */
const MIN_MEMORY = 4 * 1024 ** 2;

/** `host` or `host:port`, as image references name a registry. */
const registryHost = z
  .string()
  .check(z.regex(/^[a-zA-Z0-9.-]+(:\d{1,5})?$/, "expected a registry as image references name it: host or host:port"));

/**
 * A glob over host device paths: `/dev/` and then letters, digits, `_`, `.`,
 * `-`, `:` (udev's by-path names), `/`, with `*` and `?` matching within one path component and `[…]` a
 * character class. No `..` and no empty components.
 */
export const devicePattern = z.string().check(
  z.regex(/^\/dev\/[a-zA-Z0-9_.:\-/*?[\]]+$/, "expected a glob under /dev/, such as /dev/ttyUSB*"),
  z.refine((p) => !p.split("/").slice(1).includes(".."), "must not contain '..'"),
  z.refine((p) => !p.slice(1).split("/").includes(""), "must not contain empty path components"),
  z.refine((p) => !/\[[^\]]*$|\[\]/.test(p), "has an unclosed or empty [ ] class"),
);

const memory = byteQuantity.check(z.refine((v) => v >= MIN_MEMORY, "expected at least 4 MiB"));
const pids = z.number().check(z.int(), z.minimum(1));

export const devicePolicy = z
  .object({
    registries: z.optional(z.array(registryHost)),
    hostNetwork: z._default(z.boolean(), false),
    devices: z._default(z.array(devicePattern), []),
    requireSigned: z.optional(z.boolean()),
    defaults: z._default(
      z.object({ memory: z._default(memory, DEFAULT_LIMITS.memory), pids: z._default(pids, DEFAULT_LIMITS.pids) }),
      { ...DEFAULT_LIMITS },
    ),
    max: z._default(
      z.object({ memory: z._default(memory, MAX_LIMITS.memory), pids: z._default(pids, MAX_LIMITS.pids) }),
      { ...MAX_LIMITS },
    ),
  })
  .check(
    z.superRefine((p, ctx) => {
      for (const field of ["memory", "pids"] as const) {
        if (p.defaults[field] > p.max[field])
          ctx.addIssue({
            code: "custom",
            path: ["defaults", field],
            message: `${p.defaults[field]} is above policy.max.${field} (${p.max[field]})`,
          });
      }
    }),
  );

export type DevicePolicyConfig = z.output<typeof devicePolicy>;
