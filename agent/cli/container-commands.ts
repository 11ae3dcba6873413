/** `fleetlet ps`, `logs`, `stop`, `kill` and `rm`: thin wrappers over the runtime. */

import type { ContainerInfo } from "../../schemas/container.js";
import { FleetError } from "../errors.js";
import type { ParsedArgs } from "./args.js";
import type { Command } from "./command-line.js";
import type { CliContext } from "./context.js";
import { ago, formatTable } from "./output.js";

function one(positionals: string[], what: string): string {
  if (positionals.length !== 1)
    throw new FleetError("E_INVALID_ARGUMENT", `${what}: expected exactly one container`, { exitCode: 2 });
  return positionals[0]!;
}

function statusText(c: ContainerInfo): string {
  if (c.status === "running") return `Up since ${ago(c.startedAt)}`;
  if (c.status === "exited")
    return c.exit
      ? `Exited (${c.exit.exitCode}${c.exit.oomKilled ? ", OOM" : ""}) ${ago(c.exit.finishedAt)}`
      : "Exited (unknown)";
  return "Created";
}

function listContainers(ctx: CliContext, { options }: ParsedArgs): number {
  const runtime = ctx.runtime;
  const list = runtime.list().filter((c) => options.all || c.status === "running");
  if (options.json) {
    process.stdout.write(
      `${JSON.stringify(
        list.map(({ spec, ...rest }) => ({ ...rest, command: spec.command })),
        null,
        2,
      )}\n`,
    );
    return 0;
  }
  const rows = list.map((c) => [
    c.id,
    statusText(c),
    c.pid && c.status === "running" ? String(c.pid) : "-",
    c.spec.command.join(" ").slice(0, 40),
    ago(c.createdAt),
  ]);
  process.stdout.write(formatTable(["CONTAINER", "STATUS", "PID", "COMMAND", "CREATED"], rows));
  return 0;
}

function printLogs(ctx: CliContext, { options, positionals }: ParsedArgs): number {
  const tail = options.tail === undefined ? undefined : Number(options.tail);
  if (tail !== undefined && (!Number.isInteger(tail) || tail < 0)) {
    throw new FleetError("E_INVALID_ARGUMENT", `--tail: expected a whole number, got "${options.tail}"`, {
      exitCode: 2,
    });
  }
  process.stdout.write(ctx.runtime.logs(containerOf(ctx, one(positionals, "logs")), { tail }));
  return 0;
}

/** A container id, or an agent service's name: its current container (the running one first). */
function containerOf(ctx: CliContext, name: string): string {
  const all = ctx.runtime.list();
  if (all.some((c) => c.id === name)) return name;
  const ofService = all
    .filter((c) => c.spec.labels["fleetlet.service"] === name)
    .sort(
      (a, b) =>
        Number(b.status === "running") - Number(a.status === "running") || b.createdAt.localeCompare(a.createdAt),
    );
  if (ofService[0]) return ofService[0].id;
  throw new FleetError("E_NOT_FOUND", `no container or service named ${name}`);
}

async function stopContainer(ctx: CliContext, { options, positionals }: ParsedArgs): Promise<number> {
  const seconds = options.time === undefined ? undefined : Number(options.time);
  if (seconds !== undefined && !(seconds >= 0))
    throw new FleetError("E_INVALID_ARGUMENT", `--time: expected seconds, got "${options.time}"`, { exitCode: 2 });
  const id = one(positionals, "stop");
  const exit = await ctx.runtime.stop(id, {
    timeoutMs: seconds === undefined ? undefined : seconds * 1000,
    signal: options.signal as string | undefined,
  });
  process.stdout.write(`${id} exited with ${exit.exitCode}\n`);
  return 0;
}

function killContainer(ctx: CliContext, { options, positionals }: ParsedArgs): number {
  const id = one(positionals, "kill");
  if (!ctx.runtime.kill(id, (options.signal as string | undefined) ?? "SIGKILL")) {
    throw new FleetError("E_CONFLICT", `container ${id} is not running`);
  }
  return 0;
}

async function removeContainers(ctx: CliContext, { options, positionals }: ParsedArgs): Promise<number> {
  if (positionals.length === 0)
    throw new FleetError("E_INVALID_ARGUMENT", "rm: name at least one container", { exitCode: 2 });
  const runtime = ctx.runtime;
  runtime.sweep();
  for (const id of positionals) {
    await runtime.delete(id, { force: options.force === true });
    process.stdout.write(`${id}\n`);
  }
  await runtime.settled();
  return 0;
}

export const psCommand: Command<CliContext> = {
  options: [
    { name: "all", short: "a", type: "boolean" },
    { name: "json", type: "boolean" },
  ],
  run: listContainers,
};
export const logsCommand: Command<CliContext> = {
  options: [{ name: "tail", short: "n", type: "string" }],
  run: printLogs,
};
export const stopCommand: Command<CliContext> = {
  options: [
    { name: "time", short: "t", type: "string" },
    { name: "signal", short: "s", type: "string" },
  ],
  run: stopContainer,
};
export const killCommand: Command<CliContext> = {
  options: [{ name: "signal", short: "s", type: "string" }],
  run: killContainer,
};
export const rmCommand: Command<CliContext> = {
  options: [{ name: "force", short: "f", type: "boolean" }],
  run: removeContainers,
};
