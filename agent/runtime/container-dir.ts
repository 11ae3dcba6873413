/**
 * One container's directory, `<root>/containers/<id>/`: the spec (state.json,
 * from create), where its processes are (running.json, from the shim), how
 * it ended (exit.json, from the shim), the log, and the overlay's upper and
 * work dirs. The directory, `upper/` and `work/` are root's alone (0700):
 * what a container writes (a setuid program, say) must not be reachable by
 * a local user. The overlay's upper dir itself is `upper/fs/`, 0755: the
 * overlay takes its root's mode from it, and a container running as
 * another user must still be able to look inside its own root. State files
 * are replaced atomically (write, fsync, rename) so that a crash leaves the
 * old or the new version, never half.
 * Container files are not fsynced: a power cut ends the containers too, and
 * rename already makes them whole across a crash of the process.
 */
import { chmodSync, closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  type ContainerState,
  containerState,
  type ExitRecord,
  exitRecord,
  type RunningRecord,
  runningRecord,
} from "../../schemas/container.js";
import type { Schema } from "../../schemas/format-issues.js";
import { FleetError, isErrno } from "../errors.js";
import { privateDir } from "../system/state-root.js";

export interface ContainerPaths {
  dir: string;
  state: string;
  running: string;
  exit: string;
  log: string;
  /** Root's alone (0700); holds `upperFs`. */
  upper: string;
  /** The overlay's upper dir: the container's writable layer, and the mode of its `/`. */
  upperFs: string;
  work: string;
  rootfs: string;
}

export function containerPaths(root: string, id: string): ContainerPaths {
  // One join; the rest are fixed names under it (join's normalising is the
  // costly part of a lookup, and the agent makes many).
  const dir = join(root, "containers", id);
  return {
    dir,
    state: `${dir}/state.json`,
    running: `${dir}/running.json`,
    exit: `${dir}/exit.json`,
    log: `${dir}/container.log`,
    upper: `${dir}/upper`,
    upperFs: `${dir}/upper/fs`,
    work: `${dir}/work`,
    // The overlay is mounted over the container dir itself, in the init's
    // own mount namespace: the host keeps seeing the dir, and no mount point
    // needs creating.
    rootfs: dir,
  };
}

/** The mode of the container's `/` as it sees it (the shim made its upper dir 0755 before). */
const ROOT_MODE = 0o755;

/** Makes the overlay's upper and work dirs before the shim starts (it makes them only if missing). */
export function prepareOverlayDirs(paths: ContainerPaths): void {
  privateDir(paths.upper);
  privateDir(paths.work);
  try {
    mkdirSync(paths.upperFs, ROOT_MODE);
  } catch (err) {
    if (!isErrno(err, "EEXIST")) throw err; // a start that failed made it already
  }
  chmodSync(paths.upperFs, ROOT_MODE); // whatever the umask
}

/** Replaces `path` whole; with `durable`, also across a power cut. */
export function writeFileAtomic(path: string, data: string | Buffer, opts: { durable?: boolean } = {}): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, "w", 0o644);
  try {
    writeFileSync(fd, data);
    if (opts.durable) fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

export function readState(paths: ContainerPaths, id: string): ContainerState {
  let text: string;
  try {
    text = readFileSync(paths.state, "utf8");
  } catch (err) {
    if (isErrno(err, "ENOENT")) throw new FleetError("E_NOT_FOUND", `no such container: ${id}`);
    throw err;
  }
  const parsed = containerState.safeParse(JSON.parse(text));
  if (!parsed.success) throw new FleetError("E_RUNTIME", `container ${id}: state file ${paths.state} is damaged`);
  return parsed.data;
}

export function writeState(paths: ContainerPaths, state: ContainerState): void {
  writeFileAtomic(paths.state, `${JSON.stringify(state, null, 2)}\n`);
}

/** A record the shim writes; undefined while it does not exist (or is not whole yet). */
function readShimRecord<T>(path: string, schema: Schema<T>): T | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if (isErrno(err, "ENOENT")) return undefined;
    throw err;
  }
  try {
    const parsed = schema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined; // cut short by a crash while it was written: as if absent
  }
}

export function readExit(paths: ContainerPaths): ExitRecord | undefined {
  return readShimRecord(paths.exit, exitRecord);
}

export function readRunning(paths: ContainerPaths): RunningRecord | undefined {
  return readShimRecord(paths.running, runningRecord);
}
