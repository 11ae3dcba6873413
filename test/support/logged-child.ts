/** A test service's child process with the tail of its output kept for error messages. */
import { type ChildProcess, spawn } from "node:child_process";

export interface LoggedChild {
  child: ChildProcess;
  /** The last 16 KiB of stdout and stderr, or "(no output)". */
  output: () => string;
}

/** Spawns `bin`; a spawn error (a missing binary) shows up as an exit, its text in the output. */
export function spawnLogged(bin: string, args: string[]): LoggedChild {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const keep = (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-16_384);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  child.on("error", (err) => keep(Buffer.from(`${bin}: ${err.message}\n`)));
  return { child, output: () => log || "(no output)" };
}
