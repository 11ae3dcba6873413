/** `fleetlet`: the device-side command. Parses, calls the runtime, prints. */
import { loadDeviceConfig, resolveRoot } from "../config/device-config.js";
import { FleetError } from "../errors.js";
import { loadNative } from "../system/native.js";
import { execWithAgentFlags } from "../system/process-memory.js";
import { applyCommand } from "./agent-commands.js";
import { type Command, parseCommandLine } from "./command-line.js";
import { killCommand, logsCommand, psCommand, rmCommand, stopCommand } from "./container-commands.js";
import { CliContext } from "./context.js";
import { FLEETLET_GLOBALS } from "./fleetlet-globals.js";
import { imagesCommand, pruneCommand, pullCommand, rmiCommand } from "./image-commands.js";
import { printError } from "./output.js";
import { PULL_WORKER_COMMAND } from "./pull-process.js";
import { runCommand } from "./run-command.js";
import { fleetletVersion } from "./version.js";

const HELP = `usage: fleetlet [--root DIR] [--config FILE] COMMAND [ARGS]
       fleetlet --version

Containers:
  run [--rm] [-d] [--name N] (--rootfs DIR | IMAGE) [--memory 32Mi] [--cpus 0.5] [--pids N]
      [--hostname H] [-e K=V] [-v NAME:/path[:ro]] [--network none|host|NAME] [-p PORT] [--read-only] [--init]
      [--user UID[:GID]] [-w DIR] [--entrypoint CMD] [--cap-add CAP] [--cap-drop CAP]
      [--device PATH[:TARGET][:PERMS]] [--group-add G] [--] [CMD...]
                            run's options go before IMAGE (or --): every word after
                            IMAGE, or after --, is the container's command
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
                            the daemon: desired state over MQTT, status endpoint, reattach;
                            the reported state goes out when it changes, and also every
                            SECONDS with --heartbeat (off by default)
  status [--json]           the running agent's state, from its status endpoint
  apply FILE                converge on a desired-state document locally, with no broker;
                            exits 0 when converged, non-zero with the reason otherwise

Global options, before or after the command word (not after -- or run's IMAGE),
as --root DIR or --root=DIR:
  --root DIR     state directory (default /var/lib/fleetlet, or $FLEETLET_ROOT)
  --config FILE  device config (default /etc/fleetlet/config.json, or $FLEETLET_CONFIG)
  --help         this text
  --version      print fleetlet's version
`;

export { FLEETLET_GLOBALS };

export const FLEETLET_COMMANDS: Record<string, Command<CliContext>> = {
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
  agent: {
    options: [{ name: "heartbeat", type: "string" }],
    run: async (ctx, args) => (await import("./agent-daemon.js")).agentCommand(ctx, args),
  },
  status: {
    options: [{ name: "json", type: "boolean" }],
    run: async (ctx, args) => (await import("./agent-status.js")).statusCommand(ctx, args),
  },
};

/** The daemon runs under its own Node flags, in the same process: see process-memory.ts. */
function reexecForAgent(): void {
  try {
    execWithAgentFlags(loadNative().core);
  } catch (err) {
    // Only the memory tuning is lost: the agent runs on under the flags it has.
    process.stderr.write(
      `fleetlet: warning: could not re-execute with the agent's Node flags (${(err as Error).message}); running without them\n`,
    );
  }
}

export async function main(argv: string[]): Promise<number> {
  // A child of the daemon, not a command: see pull-process.ts.
  if (argv[0] === PULL_WORKER_COMMAND) process.exit(await (await import("./pull-worker.js")).runPullWorker());
  try {
    const { name, command, globals, args } = parseCommandLine(argv, FLEETLET_GLOBALS, FLEETLET_COMMANDS);
    if (globals.version) {
      process.stdout.write(`fleetlet ${fleetletVersion()}\n`);
      return 0;
    }
    if (globals.help || !name || name === "help") {
      process.stdout.write(HELP);
      return name || globals.help ? 0 : 2;
    }
    if (!command)
      throw new FleetError("E_INVALID_ARGUMENT", `unknown command "${name}" (see fleetlet --help)`, { exitCode: 2 });
    if (process.getuid?.() !== 0)
      throw new FleetError("E_NOT_ROOT", `${name}: fleetlet manages containers and must run as root`, {
        exitCode: 125,
      });
    // A broken config is refused before anything runs.
    const config = loadDeviceConfig(globals.config as string | undefined);
    if (name === "agent") reexecForAgent();
    return await command.run(new CliContext(resolveRoot(globals.root as string | undefined), config), args);
  } catch (err) {
    return printError("fleetlet", err);
  }
}
