/**
 * The installed agent's layout, as deploy/install.sh lays it out and the
 * self-update changes it: PREFIX/versions/<version>/ side by side,
 * PREFIX/current and PREFIX/previous relative links to them, and
 * PREFIX/agent-update, the pending update's state, which the launcher
 * (deploy/launcher.sh, a release's bin/fleetlet) reads too. The state file is
 * `key=value` lines so that the launcher, a POSIX sh script, can read and
 * rewrite it with sed; every write is a rename, so a power cut leaves the old
 * file or the new one, never half of one.
 */
import {
  closeSync,
  fsyncSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { FleetError } from "../errors.js";

/** Where this agent is installed: PREFIX and its version, from the Node it runs on (PREFIX/versions/<v>/node/bin/node). */
export interface AgentInstall {
  prefix: string;
  version: string;
}

/** The install this process runs from, or undefined when it does not run from a release bundle's layout. */
export function agentInstallOf(execPath: string): AgentInstall | undefined {
  const m = /^(\/.*)\/versions\/([^/]+)\/node\/bin\/node$/.exec(execPath);
  return m ? { prefix: m[1]!, version: m[2]! } : undefined;
}

/**
 * The update in progress or the last one that failed:
 * - `pending`: `to` is switched in (or about to be) and on trial; the
 *   launcher counts its starts (`attempts`) and gives each a `deadline`
 *   (epoch seconds) to commit by;
 * - `failed`: `to` was reverted to `from`, for `reason`; the device does not
 *   try `to` again for the same document (`deployment`, `generation`).
 * A committed update leaves no file.
 */
export interface AgentUpdateState {
  state: "pending" | "failed";
  from: string;
  to: string;
  deployment: string;
  generation: number;
  /** Seconds a start of `to` has to commit in: agentUpdate.commitWithinMs, rounded up. */
  commitWithinSec: number;
  attempts: number;
  /** Seconds past the commit window before the launcher's watchdog kills a start (30 unless given). */
  grace?: number | undefined;
  deadline?: number | undefined;
  reason?: string | undefined;
}

export const UPDATE_STATE_FILE = "agent-update";
const VERSION = /^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/;

/** Reads PREFIX/agent-update; undefined when there is none. A file that does not parse is an error naming it. */
export function readUpdateState(prefix: string): AgentUpdateState | undefined {
  const path = join(prefix, UPDATE_STATE_FILE);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  const fields = new Map(
    text.split("\n").flatMap((l) => (/^[a-z]+=/.test(l) ? [l.split(/=(.*)/s) as [string, string]] : [])),
  );
  const num = (k: string) => (fields.has(k) && /^\d+$/.test(fields.get(k)!) ? Number(fields.get(k)) : undefined);
  const state = fields.get("state");
  const [from, to] = [fields.get("from") ?? "", fields.get("to") ?? ""];
  const generation = num("generation");
  if (
    (state !== "pending" && state !== "failed") ||
    !VERSION.test(from) ||
    !VERSION.test(to) ||
    generation === undefined
  )
    throw new FleetError(
      "E_CORRUPT_STATE",
      `${path}: not an agent update state (state, from, to and generation are needed)`,
    );
  return {
    state,
    from,
    to,
    deployment: fields.get("deployment") ?? "",
    generation,
    commitWithinSec: num("commitwithin") ?? 120,
    attempts: num("attempts") ?? 0,
    grace: num("grace"),
    deadline: num("deadline"),
    reason: fields.get("reason"),
  };
}

/** fsyncs a directory, so that a rename in it survives a power cut. */
function syncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes a file beside its final name, fsyncs it and renames it into place. */
function replaceFile(path: string, text: string): void {
  const tmp = `${path}.new`;
  const fd = openSync(tmp, "w", 0o644);
  try {
    writeFileSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  syncDir(dirname(path));
}

export function writeUpdateState(prefix: string, s: AgentUpdateState): void {
  const oneLine = (v: string) => v.replace(/[\r\n]+/g, " ");
  const lines = [
    `state=${s.state}`,
    `from=${s.from}`,
    `to=${s.to}`,
    `deployment=${oneLine(s.deployment)}`,
    `generation=${s.generation}`,
    `commitwithin=${s.commitWithinSec}`,
    `attempts=${s.attempts}`,
    ...(s.grace !== undefined ? [`grace=${s.grace}`] : []),
    ...(s.deadline !== undefined ? [`deadline=${s.deadline}`] : []),
    ...(s.reason !== undefined ? [`reason=${oneLine(s.reason)}`] : []),
  ];
  replaceFile(join(prefix, UPDATE_STATE_FILE), `${lines.join("\n")}\n`);
}

/** The update is committed: no state is left for the launcher to act on. */
export function clearUpdateState(prefix: string): void {
  rmSync(join(prefix, UPDATE_STATE_FILE), { force: true });
  syncDir(prefix);
}

/** Points PREFIX/<name> (current, previous) at versions/<version> with a rename, so the link is never missing. */
export function pointLink(prefix: string, name: "current" | "previous", version: string): void {
  const tmp = join(prefix, `${name}.new`);
  rmSync(tmp, { force: true });
  symlinkSync(`versions/${version}`, tmp);
  renameSync(tmp, join(prefix, name));
  syncDir(prefix);
}

/** Removes the versions other than `keep` (and what an interrupted unpack left), as install.sh does after an install. */
export function pruneVersions(prefix: string, keep: string[]): string[] {
  const dir = join(prefix, "versions");
  const removed = readdirSync(dir).filter((v) => !keep.includes(v));
  for (const v of removed) rmSync(join(dir, v), { recursive: true, force: true });
  return removed;
}

/** The launcher the unit runs: PREFIX/current/bin/fleetlet, which resolves `current` at each start. */
export const currentLauncher = (prefix: string) => join(prefix, "current", "bin", "fleetlet");
