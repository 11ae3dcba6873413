/** `fleetctl`: the operator-side command. */
import { loadDeviceConfig } from "../config/device-config.js";
import { FleetError } from "../errors.js";
import { parsePlatform } from "../registry/platform.js";
import { pushImage } from "../registry/push.js";
import { parseArgs } from "./args.js";
import { printError } from "./output.js";

const HELP = `usage: fleetctl [--config FILE] COMMAND [ARGS]

Commands:
  push [--cmd CMD]... [--entrypoint CMD]... [--env K=V]... [--workdir DIR]
       [--platform os/arch[/variant]] [--base IMAGE] [--mount-from REPO]... DIR|TAR REF
      build an image layer from a root filesystem (a directory, or a tar or
      tar.gz of one; whiteouts in a tar are kept) and push it, alone or on
      top of --base (same registry; its layers are mounted, not copied);
      --cmd and --entrypoint take one argument each, repeated in order:
      --cmd /bin/httpd --cmd -f

The config file has the device config's format: its "registries" section
gives the registry credentials and CA. The fleet commands (deploy, rollout,
status, keygen) are not in this build yet.
`;

async function push(argv: string[], configPath: string | undefined): Promise<number> {
  const { options, positionals } = parseArgs(argv, [
    { name: "cmd", type: "string", multiple: true },
    { name: "entrypoint", type: "string", multiple: true },
    { name: "env", short: "e", type: "string", multiple: true },
    { name: "workdir", short: "w", type: "string" },
    { name: "platform", type: "string" },
    { name: "mount-from", type: "string", multiple: true },
    { name: "base", type: "string" },
  ]);
  if (positionals.length !== 2) throw new FleetError("E_INVALID_ARGUMENT", "push: expected DIR|TAR and REF, e.g. fleetctl push ./rootfs registry.local:5000/acme/web:1.2", { exitCode: 2 });
  for (const e of options.env as string[]) {
    if (!/^[^=]+=/.test(e)) throw new FleetError("E_INVALID_ARGUMENT", `--env: expected KEY=VALUE, got "${e}"`, { exitCode: 2 });
  }
  const config = loadDeviceConfig(configPath);
  const cmd = options.cmd as string[];
  const entrypoint = options.entrypoint as string[];
  const result = await pushImage(positionals[0]!, positionals[1]!, {
    registries: config.registries,
    cmd: cmd.length ? cmd : undefined,
    entrypoint: entrypoint.length ? entrypoint : undefined,
    env: (options.env as string[]).length ? ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ...(options.env as string[])] : undefined,
    workingDir: options.workdir as string | undefined,
    platform: options.platform ? parsePlatform(options.platform as string) : undefined,
    mountFrom: options["mount-from"] as string[],
    base: options.base as string | undefined,
    onEvent: (e) => process.stderr.write(`${e.type.replace("-", " ")}: ${e.digest} (${e.size} bytes)\n`),
  });
  process.stdout.write(`${result.ref}@${result.digest}\n`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  try {
    const { options, positionals, rest } = parseArgs(
      argv,
      [
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
    if (name === "push") return await push(rest, options.config as string | undefined);
    throw new FleetError("E_INVALID_ARGUMENT", `unknown command "${name}" (see fleetctl --help)`, { exitCode: 2 });
  } catch (err) {
    return printError("fleetctl", err);
  }
}
