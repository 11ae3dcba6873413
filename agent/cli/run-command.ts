/**
 * `fleetlet run [--rm] [-d] [--name N] [--rootfs DIR | IMAGE] [limits…] -- CMD…`
 * Runs in the foreground and exits with the container's status (137 when
 * killed; an OOM kill is said plainly), or prints the id with -d.
 */
import { resolve } from "node:path";
import type { ContainerSpecInput } from "../../schemas/container.js";
import { formatBytes, parseBytes } from "../../schemas/quantity.js";
import { FleetError } from "../errors.js";
import { signalName } from "../runtime/signals.js";
import { resolveUser } from "../runtime/user-lookup.js";
import { type ImageDefaults, mergeEnv } from "../store/image-defaults.js";
import { type OptionSpec, parseArgs } from "./args.js";
import type { CliContext } from "./context.js";

export const RUN_OPTIONS: OptionSpec[] = [
  { name: "rm", type: "boolean" },
  { name: "detach", short: "d", type: "boolean" },
  { name: "name", type: "string" },
  { name: "rootfs", type: "string", multiple: true },
  { name: "memory", short: "m", type: "string" },
  { name: "cpus", type: "string" },
  { name: "cpu-shares", type: "string" },
  { name: "pids", type: "string" },
  { name: "hostname", short: "h", type: "string" },
  { name: "env", short: "e", type: "string", multiple: true },
  { name: "volume", short: "v", type: "string", multiple: true },
  { name: "network", type: "string" },
  { name: "read-only", type: "boolean" },
  { name: "user", short: "u", type: "string" },
  { name: "workdir", short: "w", type: "string" },
  { name: "cap-add", type: "string", multiple: true },
  { name: "cap-drop", type: "string", multiple: true },
  { name: "seccomp", type: "string" },
  { name: "stop-timeout", type: "string" },
  { name: "entrypoint", type: "string" },
];

const usage = (msg: string) => new FleetError("E_INVALID_ARGUMENT", msg, { exitCode: 125 });

function num(value: string | undefined, field: string, integer: boolean): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n)))
    throw usage(`--${field}: expected ${integer ? "a whole number" : "a number"}, got "${value}"`);
  return n;
}

export type ParsedRun = ReturnType<typeof parseRun>;

export function parseRun(argv: string[]) {
  const parsed = parseArgs(argv, RUN_OPTIONS, { stopAtPositional: true, exitCode: 125 });
  const rootfs = (parsed.options.rootfs as string[]).map((r) => resolve(r));
  if (rootfs.length === 0 && parsed.positionals.length === 0)
    throw usage("run: give --rootfs DIR or an IMAGE, then -- and the command");
  return { ...parsed, rootfs, image: rootfs.length === 0 ? parsed.positionals[0] : undefined };
}

/** Builds the container spec from the command line (and the image); throws naming the flag at fault. */
export function runSpec(
  parsed: ParsedRun,
  image?: ImageDefaults,
): { spec: ContainerSpecInput; rm: boolean; detach: boolean } {
  const { options: o, positionals, rest } = parsed;
  const layers = image ? image.layers : parsed.rootfs;
  let command: string[];
  if (image) {
    const entrypoint = o.entrypoint !== undefined ? [o.entrypoint as string].filter(Boolean) : image.entrypoint;
    command = [...entrypoint, ...(rest.length > 0 || o.entrypoint !== undefined ? rest : image.cmd)];
    if (command.length === 0) throw usage(`run: image ${image.ref} has no Entrypoint or Cmd: give a command after --`);
  } else {
    command = [...positionals, ...rest];
    if (command.length === 0) throw usage("run: no command given (put it after --)");
  }
  const memoryText = o.memory as string | undefined;
  const memory = memoryText === undefined ? undefined : parseBytes(memoryText);
  if (memoryText !== undefined && memory === undefined)
    throw usage(`--memory: expected a size such as 32Mi, 512k or 1G, got "${memoryText}"`);
  const volumes = (o.volume as string[]).map((v) => {
    const [name, target, mode, ...extra] = v.split(":");
    if (!name || !target || extra.length > 0 || (mode !== undefined && mode !== "ro" && mode !== "rw")) {
      throw usage(`--volume: expected NAME:/path[:ro], got "${v}"`);
    }
    return { name, target, readOnly: mode === "ro" };
  });
  const network = (o.network as string | undefined) ?? "none";
  if (network !== "none" && network !== "host") throw usage(`--network: expected none or host, got "${network}"`);
  const seccomp = (o.seccomp as string | undefined) ?? "default";
  if (seccomp !== "default" && seccomp !== "unconfined")
    throw usage(`--seccomp: expected default or unconfined, got "${seccomp}"`);
  const stopTimeout = num(o["stop-timeout"] as string | undefined, "stop-timeout", false);
  const spec: ContainerSpecInput = {
    name: o.name as string | undefined,
    layers,
    command,
    env: mergeEnv(image?.env ?? [], o.env as string[]),
    workingDir: (o.workdir as string | undefined) ?? (image?.workingDir || "/"),
    user: o.user
      ? resolveUser(o.user as string, layers, "--user")
      : image?.user
        ? resolveUser(image.user, layers, `image ${image.ref} User`)
        : undefined,
    hostname: o.hostname as string | undefined,
    resources: {
      memory,
      cpus: num(o.cpus as string | undefined, "cpus", false),
      cpuShares: num(o["cpu-shares"] as string | undefined, "cpu-shares", true),
      pids: num(o.pids as string | undefined, "pids", true),
    },
    network,
    readOnlyRootfs: o["read-only"] === true,
    volumes,
    capAdd: o["cap-add"] as string[],
    capDrop: o["cap-drop"] as string[],
    seccomp,
    stopTimeoutMs: stopTimeout === undefined ? undefined : Math.round(stopTimeout * 1000),
    ...(image?.stopSignal ? { stopSignal: image.stopSignal } : {}),
    ...(image ? { labels: { "fleetlet.image": image.ref } } : {}),
  };
  return { spec, rm: o.rm === true, detach: o.detach === true };
}

export async function runCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const parsed = parseRun(argv);
  const runtime = ctx.runtime;
  // The image's layers are leased until the container's spec names them, so a prune cannot take them meanwhile.
  const lease = parsed.image ? await (await ctx.store()).leases.take(`run ${parsed.image}`) : undefined;
  let created: { id: string; rm: boolean; detach: boolean };
  try {
    const image = parsed.image && lease ? await ctx.imageDefaults(parsed.image, lease) : undefined;
    const { spec, rm, detach } = runSpec(parsed, image);
    if (rm && detach) throw usage("run: --rm and -d cannot be combined: nothing would be left to remove the container");
    created = { id: runtime.create(spec).id, rm, detach };
  } finally {
    await lease?.release();
  }
  const { id, rm, detach } = created;
  // Handlers go in before the start: the container may be up, and the user
  // pressing Ctrl-C, before start() returns.
  let started = false;
  let pending: NodeJS.Signals | undefined;
  let signals = 0;
  const forward = (sig: NodeJS.Signals) => {
    // The first signal asks the container to stop; a second one kills it.
    if (signals++ === 0) runtime.stop(id, { signal: sig }).catch(() => runtime.kill(id, "SIGKILL"));
    else runtime.kill(id, "SIGKILL");
  };
  const onSignal = (sig: NodeJS.Signals) => {
    if (started) forward(sig);
    else pending ??= sig;
  };
  const handled: NodeJS.Signals[] = detach ? [] : ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const s of handled) process.on(s, onSignal);
  try {
    await runtime.start(id, { foreground: !detach });
  } catch (err) {
    for (const s of handled) process.off(s, onSignal);
    if (rm) await runtime.delete(id, { force: true });
    throw err;
  }
  if (detach) {
    process.stdout.write(`${id}\n`);
    return 0;
  }
  started = true;
  if (pending) forward(pending);
  try {
    const exit = await runtime.wait(id);
    if (exit.oomKilled) {
      const limit = runtime.inspect(id).spec.resources.memory;
      const what = limit ? ` (limit ${formatBytes(limit)})` : "";
      if (exit.signal === 9 || exit.exitCode === 137) process.stderr.write(`fleetlet: killed: out of memory${what}\n`);
      else process.stderr.write(`fleetlet: a process in the container was killed: out of memory${what}\n`);
    } else if (exit.signal && exit.signal !== 9) {
      process.stderr.write(`fleetlet: container killed by ${signalName(exit.signal)}\n`);
    }
    return exit.exitCode;
  } finally {
    for (const s of handled) process.off(s, onSignal);
    if (rm) {
      await runtime.delete(id, { force: true });
      await runtime.settled();
    }
  }
}
