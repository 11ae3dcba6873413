/** `fleetctl`: the operator-side command. */
import { FleetError } from "../errors.js";
import { printError } from "./output.js";

const HELP = `usage: fleetctl [--config FILE] COMMAND [ARGS]

fleetctl is the operator's side of fleetlet. This build carries the device
runtime only; push, keygen, deploy, rollout and status come with the image
store and the agent.
`;

export async function main(argv: string[]): Promise<number> {
  if (argv.length === 0 || argv[0] === "--help" || argv[0] === "help") {
    process.stdout.write(HELP);
    return argv.length === 0 ? 2 : 0;
  }
  return printError("fleetctl", new FleetError("E_INVALID_ARGUMENT", `unknown command "${argv[0]}" (see fleetctl --help)`, { exitCode: 2 }));
}
