/**
 * The state root's permissions. Image layers and containers' files hold
 * whatever an image or a container put there: setuid-root programs, file
 * capabilities, world-writable files. The host must not let a local user at
 * them, so the root and every directory under it that holds such content is
 * 0700 and owned by the user fleetlet runs as (root): nobody else can even
 * look up a name below it. The content keeps its own modes, because it is
 * what containers see.
 *
 * Whoever opens a state root (the agent, any `fleetlet` command, the store
 * or the runtime) calls `secureStateRoot`, which also repairs a root that an
 * older version or an administrator left open, and says so once.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { FleetError } from "../errors.js";

/** The directories under the root that hold image or container content (or point at it). */
export const CONTENT_DIRS = ["blobs", "blobs/sha256", "ingest", "layers", "containers", "volumes"] as const;

export const PRIVATE_MODE = 0o700;

/** Names only fleetlet puts at the top of a state root (and what mkfs leaves on a dedicated filesystem). */
const OWN_NAMES = new Set([
  ...CONTENT_DIRS,
  "db.json",
  "db.json.lock",
  "volumes.lock",
  "volumes.migrating",
  "compile-cache", // system/compile-cache.ts
]);
const IGNORED_NAMES = new Set(["lost+found"]);

/** Writes one warning line (stderr by default). */
export type Warn = (message: string) => void;

export const warnOnStderr: Warn = (message) => {
  process.stderr.write(`fleetlet: warning: ${message}\n`);
};

function owner(): { uid: number; gid: number } {
  return { uid: process.geteuid?.() ?? 0, gid: process.getegid?.() ?? 0 };
}

/**
 * Makes `path` a directory of this user's alone (0700), creating it if
 * missing. Resolves with what was wrong before ("0755", "owned by 1000"), or
 * undefined when it was already right or is new.
 */
export function privateDir(path: string): string | undefined {
  mkdirSync(path, { recursive: true, mode: PRIVATE_MODE });
  const st = statSync(path);
  const me = owner();
  const wrong: string[] = [];
  if ((st.mode & 0o7777) !== PRIVATE_MODE) wrong.push((st.mode & 0o7777).toString(8).padStart(4, "0"));
  if (st.uid !== me.uid || st.gid !== me.gid) wrong.push(`owned by ${st.uid}:${st.gid}`);
  if (wrong.length === 0) return undefined;
  chownSync(path, me.uid, me.gid);
  chmodSync(path, PRIVATE_MODE); // after chown, which may clear mode bits
  return wrong.join(", ");
}

/** The root's own dir, its content dirs and each container's dir: the ones whose mode fleetlet decides. */
function privatePaths(root: string): string[] {
  const paths: string[] = [root, ...CONTENT_DIRS.map((d) => join(root, d))];
  const containers = join(root, "containers");
  if (existsSync(containers)) {
    for (const e of readdirSync(containers, { withFileTypes: true })) {
      if (e.isDirectory()) paths.push(join(containers, e.name));
    }
  }
  return paths;
}

/**
 * Creates the state root 0700, and makes the root and the directories it
 * already holds 0700 and owned by this user, warning once (through `warn`)
 * when any was not. A second call finds nothing to repair and says nothing.
 */
export function secureStateRoot(root: string, warn: Warn = warnOnStderr): void {
  mkdirSync(root, { recursive: true, mode: PRIVATE_MODE });
  refuseForeignRoot(root);
  const repaired: string[] = [];
  for (const path of privatePaths(root)) {
    if (path !== root && !existsSync(path)) continue;
    const was = privateDir(path);
    if (was) repaired.push(`${path.slice(root.length + 1) || "."} (was ${was})`);
  }
  if (repaired.length > 0) {
    const shown = repaired.slice(0, 6).join(", ") + (repaired.length > 6 ? `, and ${repaired.length - 6} more` : "");
    warn(
      `state root ${root}: ${repaired.length === 1 ? "a directory was" : `${repaired.length} directories were`} open to other users or owned by another: ${shown}; made ${repaired.length === 1 ? "it" : "them"} 0700 and owned by uid ${owner().uid}`,
    );
  }
}

/** True when `root` holds something only fleetlet puts there: it is a state root fleetlet has used. */
export function holdsFleetletState(root: string): boolean {
  return readdirSync(root).some((n) => OWN_NAMES.has(n) || n.startsWith(".db.json."));
}

/**
 * A directory that holds things, none of them fleetlet's (`--root /tmp`, a
 * home directory), is not made private behind its owner's back: fleetlet
 * refuses it instead.
 */
function refuseForeignRoot(root: string): void {
  const names = readdirSync(root).filter((n) => !IGNORED_NAMES.has(n));
  if (names.length === 0 || holdsFleetletState(root)) return;
  throw new FleetError(
    "E_INVALID_ARGUMENT",
    `state root ${root} holds files that are not fleetlet's (${names.slice(0, 3).join(", ")}${names.length > 3 ? ", …" : ""}) and none that are; fleetlet makes its root private (0700), so name a new or empty directory`,
    { exitCode: 2 },
  );
}
