/**
 * The fleet inventory (deploy/mosquitto/inventory.example.json): every device
 * id with the groups it belongs to, and the usernames of the operators. The
 * broker's ACL is generated from it (`fleetctl acl`). A device id and an
 * operator name are also the CN of that client's certificate.
 */
import { FLEET_NAME } from "./config.js";
import * as z from "./zod.js";

const NAME_RULE = "expected 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit";

const name = z.string().check(z.regex(FLEET_NAME, NAME_RULE));

export const inventory = z
  .strictObject({
    /** device id -> the groups it belongs to */
    devices: z.record(z.string().check(z.regex(FLEET_NAME)), z.array(name), {
      // Without this the key's issue says only "Invalid key in record".
      error: (issue) => (issue.code === "invalid_key" ? `not a valid device id: ${NAME_RULE}` : undefined),
    }),
    operators: z
      .array(name)
      .check(z.minLength(1, "list at least one operator: without one nobody may publish desired state")),
  })
  .check(
    z.superRefine((inv, ctx) => {
      // A name that is both would give an operator's certificate a device's rights too, and the other way round.
      inv.operators.forEach((op, i) => {
        if (Object.hasOwn(inv.devices, op))
          ctx.addIssue({
            code: "custom",
            path: ["operators", i],
            message: `"${op}" is also a device id; operators and devices need distinct names`,
          });
      });
    }),
  );

export type Inventory = z.input<typeof inventory>;
