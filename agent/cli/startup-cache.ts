/**
 * What `fleetlet`'s entry runs before it loads the CLI's modules: Node's
 * compile cache in the state root (system/compile-cache.ts), so that the
 * modules it then loads (zod and the schemas, the store, the registry
 * client) are read from V8's code cache rather than compiled again.
 *
 * Only root's commands run at all, so only root's use it. The root is the
 * one the command will use: `--root` from before the command word (the
 * only place it can be read without the commands' own options), else
 * FLEETLET_ROOT, else the default. A `--root` anywhere later leaves the
 * cache off for that command rather than guess which root it names.
 */
import { resolveRoot } from "../../schemas/default-paths.js";
import { enableStateCompileCache } from "../system/compile-cache.js";
import { parseArgs } from "./args.js";
import { FLEETLET_GLOBALS } from "./fleetlet-globals.js";

/** The global options before the command word, and the rest; undefined on a usage error. */
function globalsFirst(argv: string[]): ReturnType<typeof parseArgs> | undefined {
  try {
    return parseArgs(argv, FLEETLET_GLOBALS, { stopAtPositional: true });
  } catch {
    // A usage error: the full parse, after the modules load, reports it. Nothing is cached meanwhile.
    return undefined;
  }
}

/** The state root the command line names, when it can be told before the commands are loaded. */
export function earlyStateRoot(argv: string[], env: NodeJS.ProcessEnv = process.env): string | undefined {
  const before = globalsFirst(argv);
  if (!before) return undefined;
  const later = before.rest.some((a) => a === "--root" || a.startsWith("--root="));
  return later ? undefined : resolveRoot(before.options.root as string | undefined, env);
}

/**
 * Whether the command is one the cache is for: not the daemon, which starts
 * once and then idles for days, and would keep the cache's buffers resident
 * (about 1.2 MiB measured) for the sake of a start it rarely makes.
 */
export function cachedCommand(argv: string[]): boolean {
  return globalsFirst(argv)?.positionals[0] !== "agent";
}

/** Turns the compile cache on for this command when it runs as root and its state root is a safe place for it. */
export function startCompileCache(argv: string[], env: NodeJS.ProcessEnv = process.env): void {
  if (process.geteuid?.() !== 0 || !cachedCommand(argv)) return;
  const root = earlyStateRoot(argv, env);
  if (root === undefined) return;
  const outcome = enableStateCompileCache(root);
  if (outcome.status === "skipped" && outcome.warn)
    process.stderr.write(`fleetlet: warning: not using the compile cache: ${outcome.reason}\n`);
}
