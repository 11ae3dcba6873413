/** `fleetctl acl`: reads the fleet inventory and prints the broker's ACL (fleet/acl.ts renders it). */
import { readFileSync } from "node:fs";
import type { Inventory } from "../../schemas/inventory.js";
import { FleetError } from "../errors.js";
import { parseInventory, renderAcl } from "../fleet/acl.js";
import { DEFAULT_TOPIC_PREFIX } from "../protocol/topics.js";
import type { ParsedArgs } from "./args.js";
import type { Command } from "./command-line.js";

export const ACL_HELP = `  acl [--prefix PREFIX] INVENTORY.json
      print the mosquitto ACL for the devices, groups and operators listed in
      INVENTORY.json (see deploy/mosquitto/README.md); PREFIX defaults to "fleet"
`;

function readInventory(file: string): Inventory {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `inventory ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      { cause: err },
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new FleetError("E_INVALID_ARGUMENT", `inventory ${file}: not valid JSON (${(err as Error).message})`, {
      cause: err,
    });
  }
  return parseInventory(raw, `inventory ${file}`);
}

/** `fleetctl acl [--prefix PREFIX] INVENTORY.json`: prints the ACL file to stdout. */
function printAcl(_ctx: unknown, { options, positionals }: ParsedArgs): number {
  if (options.help) {
    process.stdout.write(ACL_HELP);
    return 0;
  }
  if (positionals.length !== 1)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      "acl: expected one INVENTORY.json, e.g. fleetctl acl inventory.json > /etc/mosquitto/fleetlet/acl",
      { exitCode: 2 },
    );
  process.stdout.write(
    renderAcl(readInventory(positionals[0]!), (options.prefix as string | undefined) ?? DEFAULT_TOPIC_PREFIX),
  );
  return 0;
}

/** Its own --help (and -h) prints only the acl command's text. */
export const aclCommand: Command<unknown> = {
  options: [
    { name: "prefix", type: "string" },
    { name: "help", short: "h", type: "boolean" },
  ],
  run: printAcl,
};
