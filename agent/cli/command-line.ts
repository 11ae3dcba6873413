/**
 * A whole command line: `PROGRAM [GLOBAL…] COMMAND [ARGS]`. The program's
 * global options (`--root`, `--config`, …) are taken before the command word
 * and anywhere among the command's own options, as podman and kubectl take
 * them; never after `--`, nor after the first positional of a command that
 * stops there (`run IMAGE CMD…`): those words are another program's.
 */
import { type OptionSpec, type ParsedArgs, parseArgs } from "./args.js";

/** How a command's arguments are read. */
export interface CommandSyntax {
  options: OptionSpec[];
  /** Stops at the first positional: what follows it is another program's command line. */
  stopAtPositional?: boolean;
  /** The exit status of a usage error; 2 unless said. */
  exitCode?: number;
}

/** A command of a CLI: its syntax, and what runs it with `context` (the state root and config, or the config path). */
export interface Command<Context> extends CommandSyntax {
  run(context: Context, args: ParsedArgs): number | Promise<number>;
}

export interface CommandLine<Context> {
  /** The command word, if any. */
  name: string | undefined;
  /** Undefined when the command word names no command. */
  command: Command<Context> | undefined;
  /** The global options, from before and after the command word (the later one wins). */
  globals: ParsedArgs["options"];
  /** The command's own arguments, the globals taken out. */
  args: ParsedArgs;
}

/** Parses a command's arguments, with the globals it does not define itself accepted among its options. */
export function parseCommandArgs(argv: string[], syntax: CommandSyntax, globals: OptionSpec[] = []): ParsedArgs {
  const own = new Set(syntax.options.map((o) => o.name));
  return parseArgs(argv, [...syntax.options, ...globals.filter((g) => !own.has(g.name))], {
    stopAtPositional: syntax.stopAtPositional === true,
    exitCode: syntax.exitCode ?? 2,
  });
}

/** Splits `argv` into the global options, the command word and the command's arguments. */
export function parseCommandLine<Context>(
  argv: string[],
  globals: OptionSpec[],
  commands: Record<string, Command<Context>>,
): CommandLine<Context> {
  const before = parseArgs(argv, globals, { stopAtPositional: true });
  const name = before.positionals[0];
  const command = name !== undefined && Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (!command) return { name, command, globals: before.options, args: before };
  const args = parseCommandArgs(before.rest, command, globals);
  const after: ParsedArgs["options"] = {};
  const own = new Set(command.options.map((o) => o.name));
  for (const g of globals) {
    if (own.has(g.name)) continue;
    if (args.options[g.name] !== undefined) after[g.name] = args.options[g.name];
    delete args.options[g.name];
  }
  return { name, command, globals: { ...before.options, ...after }, args };
}
