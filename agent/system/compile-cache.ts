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
 *
 * Each install (the directory the entry script runs from: an installed
 * version's lib/, a checkout's dist/) has a subdirectory of its own, touched
 * at each start; one no command has touched for STALE_MS is removed (the
 * version an upgrade replaced, about 1 MB each), so upgrades do not pile up.
 */
import { lstatSync, mkdirSync, readdirSync, realpathSync, rmSync, utimesSync } from "node:fs";
import { constants, enableCompileCache } from "node:module";
import { dirname, join } from "node:path";
import { holdsFleetletState } from "./state-root.js";

/** Its name under the state root (state-root.ts counts it as fleetlet's). */
export const COMPILE_CACHE_DIR = "compile-cache";

export type CompileCacheOutcome =
  | { status: "enabled"; dir: string }
  /** Not used: the reason, for the warning (or for a test). */
  | { status: "skipped"; reason: string; warn: boolean };

const uid = () => process.geteuid?.() ?? -1;

/** An install's cache untouched this long belongs to a version no longer run here. */
export const STALE_MS = 7 * 86_400_000;

/** The subdirectory for the install `entry` (the running script) belongs to: FNV-1a of its real directory, in hex. */
export function installKey(entry: string): string {
  let dir = dirname(entry);
  try {
    dir = realpathSync(dir);
  } catch {
    // A script path that cannot be resolved still names its install well enough.
  }
  let h = 0x811c9dc5;
  for (let i = 0; i < dir.length; i++) h = Math.imul(h ^ dir.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/** Removes the other installs' subdirectories of `dir` that no start has touched for STALE_MS (ours only, no links). */
function pruneStale(dir: string, keep: string, now: number): void {
  for (const name of readdirSync(dir)) {
    if (name === keep) continue;
    const st = lstatSync(join(dir, name), { throwIfNoEntry: false });
    if (st?.isDirectory() && st.uid === uid() && now - st.mtimeMs > STALE_MS)
      rmSync(join(dir, name), { recursive: true, force: true });
  }
}

/** Makes `path` (mode 0700) unless it is there; the reason it cannot, or undefined. */
function makeDir(path: string): string | undefined {
  try {
    mkdirSync(path, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") return `cannot make ${path}: ${(err as Error).message}`;
  }
  return undefined;
}

/** Why `path` may not hold code this process runs, or undefined when it may: `perm` is the bits no one else may have. */
function untrusted(path: string, perm: number): string | undefined {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (!st) return `${path} does not exist`;
  if (!st.isDirectory()) return `${path} is not a directory${st.isSymbolicLink() ? " (a symbolic link)" : ""}`;
  if (st.uid !== uid()) return `${path} is owned by uid ${st.uid}, not ${uid()}`;
  if ((st.mode & perm) !== 0) return `${path} has mode 0${(st.mode & 0o777).toString(8)}`;
  return undefined;
}

/**
 * Turns the compile cache on in ROOT/compile-cache/<install> when the root
 * and the directories are safe to trust (see the top), for the install of
 * `entry` (the running script: process.argv[1]).
 */
export function enableStateCompileCache(
  root: string,
  entry = process.argv[1] ?? "",
  now = Date.now(),
): CompileCacheOutcome {
  const rootProblem = untrusted(root, 0o022);
  if (rootProblem) return { status: "skipped", reason: rootProblem, warn: false };
  if (!holdsFleetletState(root))
    return { status: "skipped", reason: `${root} holds no fleetlet state yet`, warn: false };
  const top = join(root, COMPILE_CACHE_DIR);
  const key = installKey(entry);
  const dir = join(top, key);
  for (const [path, perm] of [
    [top, 0o077],
    [dir, 0o077],
  ] as const) {
    const problem = makeDir(path) ?? untrusted(path, perm);
    if (problem) return { status: "skipped", reason: problem, warn: true };
  }
  try {
    utimesSync(dir, now / 1000, now / 1000); // in use: not stale for another STALE_MS
    pruneStale(top, key, now);
  } catch (err) {
    return { status: "skipped", reason: `cannot keep ${dir}: ${(err as Error).message}`, warn: true };
  }
  const result = enableCompileCache(dir);
  if (result.status === constants.compileCacheStatus.FAILED)
    return {
      status: "skipped",
      reason: `Node could not use ${dir}: ${result.message ?? "no reason given"}`,
      warn: true,
    };
  return { status: "enabled", dir };
}
