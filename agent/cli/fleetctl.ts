/** `fleetctl`: the operator-side command. */
import { loadDeviceConfig } from "../config/device-config.js";
import { FleetError } from "../errors.js";
import { pushAgent } from "../registry/agent-push.js";
import { parsePlatform } from "../registry/platform.js";
import { type LayerCompressionChoice, pushImage } from "../registry/push.js";
import { ACL_HELP, aclCommand } from "./acl-command.js";
import type { OptionSpec, ParsedArgs } from "./args.js";
import { type Command, parseCommandLine } from "./command-line.js";
import { deployCommand, keygenCommand, type OperatorContext } from "./fleet-commands.js";
import { statusCommand } from "./fleet-status.js";
import { printError } from "./output.js";
import { rolloutCommand } from "./rollout-command.js";
import { fleetletVersion } from "./version.js";

const HELP = `usage: fleetctl [--config FILE] COMMAND [ARGS]
       fleetctl --version

Commands:
  push [--cmd CMD]... [--entrypoint CMD]... [--env K=V]... [--workdir DIR]
       [--platform os/arch[/variant]] [--base IMAGE] [--mount-from REPO]... [--compress gzip|zstd] DIR|TAR REF
      build an image layer from a root filesystem (a directory, or a tar or
      tar.gz of one; whiteouts in a tar are kept) and push it, alone or on
      top of --base (same registry; its layers are mounted, not copied);
      --compress zstd writes a tar+zstd layer (default gzip);
      --cmd and --entrypoint take one argument each, repeated in order:
      --cmd /bin/httpd --cmd -f
  push-agent BUNDLE... REF
      push release bundles (npm run dist; one per architecture, one version)
      as one OCI index for a desired document's "agent"; prints REF@digest

  keygen KEYFILE
      make an ed25519 signing key: the private key goes to KEYFILE (0600),
      the public key (for the devices' "trustedKeys") to KEYFILE.pub and stdout
  deploy --device ID | --group G [--sign-key KEYFILE] [--valid-for 24h] FILE
      publish a desired-state document, retained; without a "generation"
      in FILE, fleetctl uses one past the generation the topic holds;
      --valid-for sets its notAfter: devices refuse it once that has passed
  rollout --group G FILE [--waves 5,25,100] [--healthy-within 2m]
          [--max-failures 10%] [--sign-key KEYFILE] [--valid-for 24h] [--allow-empty]
      roll FILE out to the group in waves; each wave widens only when the
      devices in the one before are healthy; too many failures halt the
      rollout and roll the wave back (exit 1); progress is kept retained;
      a group no device reports being in is refused (E_EMPTY_GROUP, exit 2)
      unless --allow-empty: its waves would pass at once with nobody updated;
      --valid-for gives each wave's document a notAfter that long after it goes out
  rollout abort --group G [--rollback] [--sign-key KEYFILE] [--valid-for 24h]
      stop the group's rollout; with --rollback the wave restores what ran before
  rollout resume --group G [--sign-key KEYFILE] [--valid-for 24h]
      carry on an interrupted rollout from its retained progress
  status [--group G] [--watch] [--json] [--share NAME]
      a table of the devices: online, deployment, phase, last error, age;
      --json prints them as a JSON array, then with --watch one JSON line
      per update; --share NAME takes the live updates through an MQTT 5
      shared subscription, so several instances split the stream

${ACL_HELP}
Global options, before or after the command word (not after --), as
--config FILE or --config=FILE:
  --config FILE  the config (default /etc/fleetlet/config.json, or $FLEETLET_CONFIG)
  --help         this text
  --version      print fleetctl's version

The config file has the device config's format: its "mqtt" section names
the broker, its "registries" section the registry credentials and CA.
`;

function compressionOption(value: string | undefined): LayerCompressionChoice | undefined {
  if (value === undefined || value === "gzip" || value === "zstd") return value;
  throw new FleetError("E_INVALID_ARGUMENT", `--compress: expected gzip or zstd, got "${value}"`, { exitCode: 2 });
}

async function push(ctx: OperatorContext, { options, positionals }: ParsedArgs): Promise<number> {
  if (positionals.length !== 2)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      "push: expected DIR|TAR and REF, e.g. fleetctl push ./rootfs registry.local:5000/acme/web:1.2",
      { exitCode: 2 },
    );
  for (const e of options.env as string[]) {
    if (!/^[^=]+=/.test(e))
      throw new FleetError("E_INVALID_ARGUMENT", `--env: expected KEY=VALUE, got "${e}"`, { exitCode: 2 });
  }
  const config = loadDeviceConfig(ctx.configPath);
  const cmd = options.cmd as string[];
  const entrypoint = options.entrypoint as string[];
  const result = await pushImage(positionals[0]!, positionals[1]!, {
    registries: config.registries,
    cmd: cmd.length ? cmd : undefined,
    entrypoint: entrypoint.length ? entrypoint : undefined,
    env: (options.env as string[]).length
      ? ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ...(options.env as string[])]
      : undefined,
    workingDir: options.workdir as string | undefined,
    platform: options.platform ? parsePlatform(options.platform as string) : undefined,
    mountFrom: options["mount-from"] as string[],
    base: options.base as string | undefined,
    compression: compressionOption(options.compress as string | undefined),
    onEvent: (e) => process.stderr.write(`${e.type.replace("-", " ")}: ${e.digest} (${e.size} bytes)\n`),
  });
  process.stdout.write(`${result.ref}@${result.digest}\n`);
  return 0;
}

async function pushAgentCommand(ctx: OperatorContext, { positionals }: ParsedArgs): Promise<number> {
  if (positionals.length < 2)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      "push-agent: expected BUNDLE... and REF, e.g. fleetctl push-agent fleetlet-0.3.0-linux-x64.tar.gz fleetlet-0.3.0-linux-arm64.tar.gz registry.local:5000/fleetlet/agent:0.3.0",
      { exitCode: 2 },
    );
  const config = loadDeviceConfig(ctx.configPath);
  const result = await pushAgent(positionals.slice(0, -1), positionals.at(-1)!, config.registries);
  for (const b of result.bundles)
    process.stderr.write(`bundle linux/${b.architecture} ${b.version}: ${b.digest} (${b.size} bytes)\n`);
  process.stdout.write(`${result.ref}@${result.digest}\n`);
  return 0;
}

/** Taken before the command word and anywhere among a command's options (not after `--`). */
export const FLEETCTL_GLOBALS: OptionSpec[] = [
  { name: "config", type: "string" },
  { name: "help", type: "boolean" },
  { name: "version", type: "boolean" },
];

export const FLEETCTL_COMMANDS: Record<string, Command<OperatorContext>> = {
  push: {
    options: [
      { name: "cmd", type: "string", multiple: true },
      { name: "entrypoint", type: "string", multiple: true },
      { name: "env", short: "e", type: "string", multiple: true },
      { name: "workdir", short: "w", type: "string" },
      { name: "platform", type: "string" },
      { name: "mount-from", type: "string", multiple: true },
      { name: "base", type: "string" },
      { name: "compress", type: "string" },
    ],
    run: push,
  },
  "push-agent": { options: [], run: pushAgentCommand },
  keygen: keygenCommand,
  deploy: deployCommand,
  rollout: rolloutCommand,
  status: statusCommand,
  acl: aclCommand,
};

export async function main(argv: string[]): Promise<number> {
  try {
    const { name, command, globals, args } = parseCommandLine(argv, FLEETCTL_GLOBALS, FLEETCTL_COMMANDS);
    if (globals.version) {
      process.stdout.write(`fleetctl ${fleetletVersion()}\n`);
      return 0;
    }
    if (globals.help || !name || name === "help") {
      process.stdout.write(HELP);
      return name || globals.help ? 0 : 2;
    }
    if (!command)
      throw new FleetError("E_INVALID_ARGUMENT", `unknown command "${name}" (see fleetctl --help)`, { exitCode: 2 });
    return await command.run({ configPath: globals.config as string | undefined }, args);
  } catch (err) {
    return printError("fleetctl", err);
  }
}
