/**
 * One container's directory, `<root>/containers/<id>/`: the spec (state.json,
 * from create), where its processes are (running.json, from the shim), how
 * it ended (exit.json, from the shim), the log, and the overlay's upper and
 * work dirs (made by the shim). State files are replaced atomically (write, fsync,
 * rename) so that a crash leaves the old or the new version, never half.
 * Container files are not fsynced: a power cut ends the containers too, and
 * rename already makes them whole across a crash of the process.
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
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

export interface ContainerPaths {
  dir: string;
  state: string;
  running: string;
  exit: string;
  log: string;
  upper: string;
  work: string;
  rootfs: string;
}

export function containerPaths(root: string, id: string): ContainerPaths {
  const dir = join(root, "containers", id);
  return {
    dir,
    state: join(dir, "state.json"),
    running: join(dir, "running.json"),
    exit: join(dir, "exit.json"),
    log: join(dir, "container.log"),
    upper: join(dir, "upper"),
    work: join(dir, "work"),
    // The overlay is mounted over the container dir itself, in the init's
    // own mount namespace: the host keeps seeing the dir, and no mount point
    // needs creating.
    rootfs: dir,
  };
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
