/**
 * A small option parser for the CLIs. Unlike util.parseArgs it can stop at
 * the first positional (`fleetlet run IMAGE cmd -c ...`), so the container's
 * own arguments are never taken for ours.
 */
import { FleetError } from "../errors.js";

export interface OptionSpec {
  name: string;
  short?: string;
  type: "boolean" | "string";
  multiple?: boolean;
}

export interface ParsedArgs {
  options: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
  /** Everything after `--`, or after the first positional when stopping there. */
  rest: string[];
  sawSeparator: boolean;
}

export function parseArgs(
  argv: string[],
  specs: OptionSpec[],
  opts: { stopAtPositional?: boolean; exitCode?: number } = {},
): ParsedArgs {
  const fail = (msg: string) => new FleetError("E_INVALID_ARGUMENT", msg, { exitCode: opts.exitCode ?? 2 });
  const options: ParsedArgs["options"] = {};
  const positionals: string[] = [];
  for (const s of specs) if (s.multiple) options[s.name] = [];
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (token === "--") return { options, positionals, rest: argv.slice(i + 1), sawSeparator: true };
    if (!token.startsWith("-") || token === "-") {
      positionals.push(token);
      if (opts.stopAtPositional) return { options, positionals, rest: argv.slice(i + 1), sawSeparator: false };
      continue;
    }
    const long = token.startsWith("--");
    const eq = token.indexOf("=");
    const key = long ? token.slice(2, eq > 0 ? eq : undefined) : token.slice(1, 2);
    const spec = specs.find((s) => (long ? s.name === key : s.short === key));
    if (!spec) throw fail(`unknown option ${long ? `--${key}` : `-${key}`}`);
    let value: string | undefined;
    if (long && eq > 0) value = token.slice(eq + 1);
    else if (!long && token.length > 2) value = token.slice(2);
    if (spec.type === "boolean") {
      if (value !== undefined) throw fail(`option --${spec.name} takes no value`);
      options[spec.name] = true;
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) throw fail(`option --${spec.name} needs a value`);
      value = argv[++i]!;
    }
    if (spec.multiple) (options[spec.name] as string[]).push(value);
    else options[spec.name] = value;
  }
  return { options, positionals, rest: [], sawSeparator: false };
}
