/**
 * The unix socket's path before the endpoint binds it: its directory is
 * created, and a socket file left by an agent that died is removed, but
 * never one a live process answers on, nor anything that is not a socket.
 */
import { lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";
import { FleetError, isErrno } from "../errors.js";

/** True when a live process answers on the socket: then it is not ours to remove. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const probe = connect(path);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", (err) => {
      if (isErrno(err, "ECONNREFUSED") || isErrno(err, "ENOENT")) resolve(false);
      else reject(new FleetError("E_RUNTIME", `api.socket ${path}: cannot tell whether it is in use: ${err.message}`));
    });
  });
}

/** Creates the socket's directory and removes a socket file left by an agent that died. */
export async function prepareSocketPath(path: string): Promise<void> {
  try {
    // 0750: the directory is the first gate; the socket itself gets 0660 once bound.
    mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
  } catch (err) {
    throw new FleetError("E_RUNTIME", `api.socket ${path}: cannot create its directory: ${(err as Error).message}`);
  }
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if (isErrno(err, "ENOENT")) return;
    throw new FleetError("E_RUNTIME", `api.socket ${path}: ${(err as Error).message}`);
  }
  if (!isSocket)
    throw new FleetError("E_CONFLICT", `api.socket ${path} exists and is not a socket; refusing to replace it`);
  if (await socketAnswers(path)) {
    throw new FleetError(
      "E_CONFLICT",
      `api.socket ${path} is in use by another process (is another fleetlet agent running?)`,
    );
  }
  unlinkSync(path);
}
