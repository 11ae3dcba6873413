/** `fleetlet`: the device-side command. Parses, calls the runtime, prints. */
import { loadDeviceConfig, resolveRoot } from "../config/device-config.js";
import { FleetError } from "../errors.js";
import { loadNative } from "../system/native.js";
import { execWithAgentFlags } from "../system/process-memory.js";
import { applyCommand } from "./agent-commands.js";
import { parseArgs } from "./args.js";
import { killCommand, logsCommand, psCommand, rmCommand, stopCommand } from "./container-commands.js";
import { CliContext } from "./context.js";
import { imagesCommand, pruneCommand, pullCommand, rmiCommand } from "./image-commands.js";
import { printError } from "./output.js";
import { runCommand } from "./run-command.js";

const HELP = `usage: fleetlet [--root DIR] [--config FILE] COMMAND [ARGS]

Containers:
  run [--rm] [-d] [--name N] (--rootfs DIR | IMAGE) [--memory 32Mi] [--cpus 0.5] [--pids N]
      [--hostname H] [-e K=V] [-v NAME:/path[:ro]] [--network none|host] [--read-only]
      [--user UID[:GID]] [-w DIR] [--entrypoint CMD] [--cap-add CAP] [--cap-drop CAP] [-- CMD...]
  ps [-a] [--json]          list containers (running ones, or all with -a)
  logs [--tail N] NAME      print a container's output (or an agent service's, by its name)
  stop [-t SECONDS] NAME    stop signal, then SIGKILL after the timeout
  kill [-s SIGNAL] NAME     send a signal to the container's init
  rm [-f] NAME...           remove containers (-f kills running ones first)

Images:
  pull [--max-rate 2M] [--platform os/arch[/variant]] [--download-only] IMAGE
                            fetch an image (resumes an interrupted pull);
                            --download-only leaves unpacking to the first run
  images [--json]           list stored images
  rmi [-f] IMAGE...         remove images and the layers only they used
  prune                     remove blobs, layers and partial downloads nothing uses

Agent:
  agent [--heartbeat SECONDS]
                            the daemon: desired state over MQTT, status endpoint, reattach
  status [--json]           the running agent's state, from its status endpoint
  apply FILE                converge on a desired-state document locally, with no broker;
                            exits 0 when converged, non-zero with the reason otherwise

Global options:
  --root DIR     state directory (default /var/lib/fleetlet, or $FLEETLET_ROOT)
  --config FILE  device config (default /etc/fleetlet/config.json, or $FLEETLET_CONFIG)
`;

type Command = (ctx: CliContext, argv: string[]) => number | Promise<number>;

const COMMANDS: Record<string, Command> = {
  run: runCommand,
  ps: psCommand,
  logs: logsCommand,
  stop: stopCommand,
  kill: killCommand,
  rm: rmCommand,
  pull: pullCommand,
  images: imagesCommand,
  rmi: rmiCommand,
  prune: pruneCommand,
  apply: applyCommand,
  // Loaded when run: the daemon's MQTT stack would cost every other command.
  agent: async (ctx, argv) => (await import("./agent-daemon.js")).agentCommand(ctx, argv),
  status: async (ctx, argv) => (await import("./agent-daemon.js")).statusCommand(ctx, argv),
};

export async function main(argv: string[]): Promise<number> {
  try {
    const { options, positionals, rest } = parseArgs(
      argv,
      [
        { name: "root", type: "string" },
        { name: "config", type: "string" },
        { name: "help", type: "boolean" },
      ],
      { stopAtPositional: true },
    );
    const name = positionals[0];
    if (options.help || !name || name === "help") {
      process.stdout.write(HELP);
      return name || options.help ? 0 : 2;
    }
    const command = COMMANDS[name];
    if (!command)
      throw new FleetError("E_INVALID_ARGUMENT", `unknown command "${name}" (see fleetlet --help)`, { exitCode: 2 });
    if (process.getuid?.() !== 0)
      throw new FleetError("E_NOT_ROOT", `${name}: fleetlet manages containers and must run as root`, {
        exitCode: 125,
      });
    // A broken config is refused before anything runs.
    const config = loadDeviceConfig(options.config as string | undefined);
    // The daemon runs under its own Node flags, in the same process: see process-memory.ts.
    if (name === "agent") {
      try {
        execWithAgentFlags(loadNative().core);
      } catch (err) {
        // Only the memory tuning is lost: the agent runs on under the flags it has.
        process.stderr.write(
          `fleetlet: warning: could not re-execute with the agent's Node flags (${(err as Error).message}); running without them\n`,
        );
      }
    }
    return await command(new CliContext(resolveRoot(options.root as string | undefined), config), rest);
  } catch (err) {
    return printError("fleetlet", err);
  }
}
