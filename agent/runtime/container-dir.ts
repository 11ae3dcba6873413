/**
 * One container's directory, `<root>/containers/<id>/`: the shim config, the
 * persisted state, the exit record, the log, and the overlay's upper, work
 * and mount-point dirs. State files are replaced atomically (write, fsync,
 * rename) so that a crash leaves the old or the new version, never half.
 * Container files are not fsynced: a power cut ends the containers too, and
 * rename already makes them whole across a crash of the process.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type ContainerState, containerState, type ExitRecord, exitRecord } from "../../schemas/container.js";
import { FleetError, isErrno } from "../errors.js";

export interface ContainerPaths {
  dir: string;
  config: string;
  state: string;
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
    config: join(dir, "config"),
    state: join(dir, "state.json"),
    exit: join(dir, "exit.json"),
    log: join(dir, "container.log"),
    upper: join(dir, "upper"),
    work: join(dir, "work"),
    rootfs: join(dir, "rootfs"),
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

export function readExit(paths: ContainerPaths): ExitRecord | undefined {
  if (!existsSync(paths.exit)) return undefined;
  const parsed = exitRecord.safeParse(JSON.parse(readFileSync(paths.exit, "utf8")));
  return parsed.success ? parsed.data : undefined;
}
