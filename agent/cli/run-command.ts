/**
 * `fleetlet run [--rm] [-d] [--name N] (--rootfs DIR | IMAGE) [limits…] [--device …] [--] [CMD…]`
 * Runs in the foreground and exits with the container's status (137 when
 * killed; an OOM kill is said plainly), or prints the id with -d.
 */
import { resolve } from "node:path";
import type { ContainerSpecInput, ExitRecord } from "../../schemas/container.js";
import { formatBytes, parseBytes } from "../../schemas/quantity.js";
import { FleetError } from "../errors.js";
import { signalName } from "../runtime/signals.js";
import { resolveGroups, resolveUser } from "../runtime/user-lookup.js";
import { type ImageDefaults, mergeEnv } from "../store/image-defaults.js";
import type { OptionSpec, ParsedArgs } from "./args.js";
import type { Command, CommandSyntax } from "./command-line.js";
import type { CliContext } from "./context.js";
import { runNetwork } from "./run-network.js";

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
  { name: "device", type: "string", multiple: true },
  { name: "group-add", type: "string", multiple: true },
  { name: "network", type: "string" },
  { name: "publish", short: "p", type: "string", multiple: true },
  { name: "read-only", type: "boolean" },
  { name: "init", type: "boolean" },
  { name: "user", short: "u", type: "string" },
  { name: "workdir", short: "w", type: "string" },
  { name: "cap-add", type: "string", multiple: true },
  { name: "cap-drop", type: "string", multiple: true },
  { name: "seccomp", type: "string" },
  { name: "stop-timeout", type: "string" },
  { name: "entrypoint", type: "string" },
];

export const RUN_SYNTAX: CommandSyntax = { options: RUN_OPTIONS, stopAtPositional: true, exitCode: 125 };

const usage = (msg: string) => new FleetError("E_INVALID_ARGUMENT", msg, { exitCode: 125 });

function num(value: string | undefined, field: string, integer: boolean): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n)))
    throw usage(`--${field}: expected ${integer ? "a whole number" : "a number"}, got "${value}"`);
  return n;
}

/** `run`'s command line: the options, the root filesystem or the image, and the command as given. */
export interface RunArguments {
  options: ParsedArgs["options"];
  rootfs: string[];
  image: string | undefined;
  /** The words after IMAGE (or `--`), with a `--` right after IMAGE dropped; empty when none were given. */
  command: string[];
}

/**
 * `run --rootfs DIR [--] CMD…`, `run IMAGE [--] [CMD…]` and `run -- IMAGE
 * [CMD…]`: the first positional ended our options, so a `--` right after
 * IMAGE is the separator, not the command.
 */
export function parseRun(args: ParsedArgs): RunArguments {
  const rootfs = (args.options.rootfs as string[]).map((r) => resolve(r));
  const words = [...args.positionals, ...args.rest];
  if (rootfs.length > 0) return { options: args.options, rootfs, image: undefined, command: words };
  const [image, ...rest] = words;
  if (image === undefined) throw usage("run: give --rootfs DIR or an IMAGE, then -- and the command");
  const command = args.positionals.length > 0 && rest[0] === "--" ? rest.slice(1) : rest;
  return { options: args.options, rootfs, image, command };
}

/** The command the container runs: the image's entrypoint and cmd merged as Docker does, or the one given. */
function containerCommand(run: RunArguments, image: ImageDefaults | undefined): string[] {
  const o = run.options;
  if (!image) {
    if (run.command.length === 0) throw usage("run: no command given (put it after --)");
    return run.command;
  }
  const entrypoint = o.entrypoint !== undefined ? [o.entrypoint as string].filter(Boolean) : image.entrypoint;
  const command = [...entrypoint, ...(run.command.length > 0 || o.entrypoint !== undefined ? run.command : image.cmd)];
  if (command.length === 0) throw usage(`run: image ${image.ref} has no Entrypoint or Cmd: give a command after --`);
  return command;
}

function volumes(given: string[]): ContainerSpecInput["volumes"] {
  return given.map((v) => {
    const [name, target, mode, ...extra] = v.split(":");
    if (!name || !target || extra.length > 0 || (mode !== undefined && mode !== "ro" && mode !== "rw")) {
      throw usage(`--volume: expected NAME:/path[:ro], got "${v}"`);
    }
    return { name, target, readOnly: mode === "ro" };
  });
}

/**
 * `--device PATH[:TARGET][:PERMS]`, as Docker spells it. The operator is the
 * policy here: no policy.devices check. TARGET starts at the first ":/", so
 * PATH may hold colons (udev's by-path names); a last field without a "/"
 * after TARGET, or of only r, w and m after PATH, is the permissions.
 */
function devices(given: string[]): ContainerSpecInput["devices"] {
  return given.map((d) => {
    const at = d.indexOf(":/");
    const [path, tail] = at < 0 ? [d, undefined] : [d.slice(0, at), d.slice(at + 1)];
    const perms = tail === undefined ? /:([rwm]+)$/.exec(path) : /:([^/]*)$/.exec(tail);
    const cut = (s: string) => (perms ? s.slice(0, perms.index) : s);
    const [source, target] = tail === undefined ? [cut(path), undefined] : [path, cut(tail)];
    if (!source) throw usage(`--device: expected PATH[:TARGET][:PERMS], got "${d}"`);
    return { path: source, ...(target ? { target } : {}), ...(perms ? { permissions: perms[1] } : {}) };
  });
}

/** The value of option `name`, one of `allowed` (the first is the default). */
function choice<T extends string>(options: ParsedArgs["options"], name: string, allowed: readonly T[]): T {
  const value = (options[name] as string | undefined) ?? allowed[0]!;
  if (!allowed.includes(value as T)) throw usage(`--${name}: expected ${allowed.join(" or ")}, got "${value}"`);
  return value as T;
}

function resources(o: ParsedArgs["options"]): ContainerSpecInput["resources"] {
  const memoryText = o.memory as string | undefined;
  const memory = memoryText === undefined ? undefined : parseBytes(memoryText);
  if (memoryText !== undefined && memory === undefined)
    throw usage(`--memory: expected a size such as 32Mi, 512k or 1G, got "${memoryText}"`);
  return {
    memory,
    cpus: num(o.cpus as string | undefined, "cpus", false),
    cpuShares: num(o["cpu-shares"] as string | undefined, "cpu-shares", true),
    pids: num(o.pids as string | undefined, "pids", true),
  };
}

function user(o: ParsedArgs["options"], layers: string[], image: ImageDefaults | undefined) {
  const base = o.user
    ? resolveUser(o.user as string, layers, "--user")
    : image?.user
      ? resolveUser(image.user, layers, `image ${image.ref} User`)
      : { uid: 0, gid: 0, groups: [] };
  return { ...base, groups: [...base.groups, ...resolveGroups(o["group-add"] as string[], layers, "--group-add")] };
}

/** Builds the container spec from the command line (and the image); throws naming the flag at fault. */
export function runSpec(
  run: RunArguments,
  image?: ImageDefaults,
  joined?: Partial<ContainerSpecInput>,
): { spec: ContainerSpecInput; rm: boolean; detach: boolean } {
  const o = run.options;
  const layers = image ? image.layers : run.rootfs;
  const command = containerCommand(run, image);
  const stopTimeout = num(o["stop-timeout"] as string | undefined, "stop-timeout", false);
  const spec: ContainerSpecInput = {
    name: o.name as string | undefined,
    layers,
    command,
    env: mergeEnv(image?.env ?? [], o.env as string[]),
    workingDir: (o.workdir as string | undefined) ?? (image?.workingDir || "/"),
    user: user(o, layers, image),
    hostname: o.hostname as string | undefined,
    resources: resources(o),
    ...(joined ?? { network: choice(o, "network", ["none", "host"] as const) }),
    readOnlyRootfs: o["read-only"] === true,
    init: o.init === true,
    volumes: volumes(o.volume as string[]),
    devices: devices(o.device as string[]),
    capAdd: o["cap-add"] as string[],
    capDrop: o["cap-drop"] as string[],
    seccomp: choice(o, "seccomp", ["default", "unconfined"] as const),
    stopTimeoutMs: stopTimeout === undefined ? undefined : Math.round(stopTimeout * 1000),
    ...(image?.stopSignal ? { stopSignal: image.stopSignal } : {}),
    ...(image ? { labels: { "fleetlet.image": image.ref } } : {}),
  };
  return { spec, rm: o.rm === true, detach: o.detach === true };
}

/** An OOM kill or a signal other than SIGKILL, said plainly on stderr. */
function sayHowItEnded(exit: ExitRecord, memoryLimit: number | undefined): void {
  if (exit.oomKilled) {
    const what = memoryLimit ? ` (limit ${formatBytes(memoryLimit)})` : "";
    if (exit.signal === 9 || exit.exitCode === 137) process.stderr.write(`fleetlet: killed: out of memory${what}\n`);
    else process.stderr.write(`fleetlet: a process in the container was killed: out of memory${what}\n`);
  } else if (exit.signal && exit.signal !== 9) {
    process.stderr.write(`fleetlet: container killed by ${signalName(exit.signal)}\n`);
  }
}

/**
 * Creates the container. The image's layers are leased until the
 * container's spec names them, so a prune cannot take them meanwhile.
 */
async function createContainer(ctx: CliContext, run: ReturnType<typeof parseRun>) {
  const lease = run.image ? await (await ctx.store()).leases.take(`run ${run.image}`) : undefined;
  try {
    const image = run.image && lease ? await ctx.imageDefaults(run.image, lease) : undefined;
    const { spec, rm, detach } = runSpec(run, image, await runNetwork(ctx, run.options));
    if (rm && detach) throw usage("run: --rm and -d cannot be combined: nothing would be left to remove the container");
    return { id: ctx.runtime.create(spec).id, rm, detach };
  } finally {
    await lease?.release();
  }
}

/**
 * Passes the signals `fleetlet run` gets on to its container: the first asks
 * it to stop, a second kills it. One that comes before the start is held
 * until `started()`. `off()` resolves once a stop it asked for has ended, so
 * the container is not removed (--rm) while that stop still waits on it.
 */
function signalForwarder(runtime: CliContext["runtime"], id: string) {
  let started = false;
  let pending: NodeJS.Signals | undefined;
  let signals = 0;
  let stopping: Promise<unknown> | undefined;
  // A container that has exited meanwhile has nothing left to kill.
  const kill = () => {
    try {
      runtime.kill(id, "SIGKILL");
    } catch (err) {
      const code = (err as FleetError).code;
      if (code !== "E_CONFLICT" && code !== "E_NOT_FOUND")
        process.stderr.write(`fleetlet: kill ${id}: ${(err as Error).message}\n`);
    }
  };
  const forward = (sig: NodeJS.Signals) => {
    if (signals++ === 0) stopping = runtime.stop(id, { signal: sig }).catch(kill);
    else kill();
  };
  const onSignal = (sig: NodeJS.Signals) => {
    if (started) forward(sig);
    else pending ??= sig;
  };
  const handled: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const s of handled) process.on(s, onSignal);
  return {
    started(): void {
      started = true;
      if (pending) forward(pending);
    },
    async off(): Promise<void> {
      for (const s of handled) process.off(s, onSignal);
      await stopping;
    },
  };
}

async function runContainer(ctx: CliContext, args: ParsedArgs): Promise<number> {
  const runtime = ctx.runtime;
  const { id, rm, detach } = await createContainer(ctx, parseRun(args));
  // Handlers go in before the start: the container may be up, and the user
  // pressing Ctrl-C, before start() returns.
  const signals = detach ? undefined : signalForwarder(runtime, id);
  try {
    await runtime.start(id, { foreground: !detach });
  } catch (err) {
    await signals?.off();
    if (rm) await runtime.delete(id, { force: true });
    throw err;
  }
  if (!signals) {
    process.stdout.write(`${id}\n`);
    return 0;
  }
  signals.started();
  try {
    const exit = await runtime.wait(id);
    sayHowItEnded(exit, runtime.inspect(id).spec.resources.memory);
    return exit.exitCode;
  } finally {
    await signals.off();
    if (rm) {
      await runtime.delete(id, { force: true });
      await runtime.settled();
    }
  }
}

export const runCommand: Command<CliContext> = { ...RUN_SYNTAX, run: runContainer };
