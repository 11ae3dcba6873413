/**
 * Node's compile cache (V8 code cache of every module loaded after it is
 * on) in ROOT/compile-cache, so that a `fleetlet` command or a pull worker
 * deserializes its modules' code instead of compiling them at each start.
 *
 * A code cache is code this process runs as root without re-checking it
 * (Node compares only checksums), so the directory is trusted only as far
 * as the state root itself: it is used only when the state root exists, is
 * owned by this user, is writable by no one else (the 0700 root that
 * system/state-root.ts keeps) and holds fleetlet's state already (nothing
 * is made in a directory that a command would refuse as a root), and when the directory is a real directory
 * (not a link) of this user's, mode 0700, made so here. Anything else (a
 * missing root, another owner, a link, looser modes) is left alone and the
 * command runs without the cache; a cache directory that is not as made
 * here is said in a warning, since nothing of ours makes it so. Node itself
 * ignores a corrupt or foreign entry (its checksum or its Node version
 * differs) and compiles the module afresh.
 */
import { lstatSync, mkdirSync } from "node:fs";
import { constants, enableCompileCache } from "node:module";
import { join } from "node:path";
import { holdsFleetletState } from "./state-root.js";

/** Its name under the state root (state-root.ts counts it as fleetlet's). */
export const COMPILE_CACHE_DIR = "compile-cache";

export type CompileCacheOutcome =
  | { status: "enabled"; dir: string }
  /** Not used: the reason, for the warning (or for a test). */
  | { status: "skipped"; reason: string; warn: boolean };

const uid = () => process.geteuid?.() ?? -1;

/** Why `path` may not hold code this process runs, or undefined when it may: `perm` is the bits no one else may have. */
function untrusted(path: string, perm: number): string | undefined {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (!st) return `${path} does not exist`;
  if (!st.isDirectory()) return `${path} is not a directory${st.isSymbolicLink() ? " (a symbolic link)" : ""}`;
  if (st.uid !== uid()) return `${path} is owned by uid ${st.uid}, not ${uid()}`;
  if ((st.mode & perm) !== 0) return `${path} has mode 0${(st.mode & 0o777).toString(8)}`;
  return undefined;
}

/** Turns the compile cache on in ROOT/compile-cache when the root and the directory are safe to trust; see the top. */
export function enableStateCompileCache(root: string): CompileCacheOutcome {
  const rootProblem = untrusted(root, 0o022);
  if (rootProblem) return { status: "skipped", reason: rootProblem, warn: false };
  if (!holdsFleetletState(root))
    return { status: "skipped", reason: `${root} holds no fleetlet state yet`, warn: false };
  const dir = join(root, COMPILE_CACHE_DIR);
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST")
      return { status: "skipped", reason: `cannot make ${dir}: ${(err as Error).message}`, warn: true };
  }
  const dirProblem = untrusted(dir, 0o077);
  if (dirProblem) return { status: "skipped", reason: dirProblem, warn: true };
  const result = enableCompileCache(dir);
  if (result.status === constants.compileCacheStatus.FAILED)
    return {
      status: "skipped",
      reason: `Node could not use ${dir}: ${result.message ?? "no reason given"}`,
      warn: true,
    };
  return { status: "enabled", dir };
}
