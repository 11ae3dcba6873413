/**
 * The daemon's pulls, each in a child process (the pull worker,
 * pull-worker.ts): the same Node and the same CLI script, forked with an IPC
 * channel, exiting when its pull is done. The registry client and the
 * HTTP/TLS stack are loaded there and never in the daemon, which idles for
 * days between pulls: their memory goes back to the system with the child.
 *
 * What crosses the channel: the request (state root, device config, image,
 * the caller's lease by id), the pull's events as they come, and its result,
 * an image record or a FleetError's code and message. The caller's lease stays
 * the caller's (its holder is the daemon); the worker adds content to it by
 * id, and any lease or temp dir of the worker's own names the worker as its
 * holder, so it expires with it. Aborting kills the worker (SIGTERM, which
 * ends its pull as an interrupted one, then SIGKILL after KILL_AFTER_MS) and
 * rejects, once it has exited, with the signal's reason. A worker that ended
 * before it said anything rejects with E_PULL_WORKER: the caller may then pull
 * in its own process (CliContext.pull does, e.g. under qemu-user, which cannot
 * exec a foreign binary).
 */
import { fork } from "node:child_process";
import type { DeviceConfig } from "../../schemas/config.js";
import { type ErrorCode, FleetError } from "../errors.js";
import type { Platform } from "../registry/platform.js";
import type { PullEvent } from "../registry/pull.js";
import type { ImageRecord } from "../store/image-store.js";

/** The hidden first argument that makes `fleetlet` a pull worker. */
export const PULL_WORKER_COMMAND = "__pull-worker";
/** Between SIGTERM and SIGKILL for a worker whose pull was aborted. */
export const KILL_AFTER_MS = 5_000;

export interface PullRequest {
  root: string;
  config: DeviceConfig;
  ref: string;
  /** The id of the caller's lease: the worker adds what it pulls to it. */
  leaseId?: string;
  unpack: boolean;
  maxRate?: number;
  platform?: Platform;
}

export type WorkerMessage =
  | { type: "event"; event: PullEvent }
  | { type: "done"; image: ImageRecord }
  | { type: "error"; code: ErrorCode; message: string };

export interface WorkerOptions {
  /** The CLI script the worker runs (`fleetlet`'s: process.argv[1] in the daemon). */
  script: string;
  /** Its Node flags; the daemon's own by default. */
  execArgv?: string[];
  signal?: AbortSignal;
  onEvent?: (e: PullEvent) => void;
}

type Outcome = { image: ImageRecord } | { error: unknown };

/** Pulls `request.ref` in a pull worker; resolves with its image record once the worker has exited. */
export function pullInWorker(request: PullRequest, opts: WorkerOptions): Promise<ImageRecord> {
  opts.signal?.throwIfAborted();
  const what = `pull of ${request.ref}`;
  return new Promise((resolve, reject) => {
    // The worker's stderr is the daemon's: a crash's trace lands in its log.
    const child = fork(opts.script, [PULL_WORKER_COMMAND], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      execArgv: opts.execArgv ?? process.execArgv,
    });
    let outcome: Outcome | undefined;
    let heard = false; // a message came: the worker ran
    let killer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      outcome = { error: opts.signal?.reason };
      child.kill("SIGTERM");
      killer = setTimeout(() => child.kill("SIGKILL"), KILL_AFTER_MS);
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.on("message", (m: WorkerMessage) => {
      heard = true;
      if (m.type === "event") opts.onEvent?.(m.event);
      else if (outcome)
        return; // aborted: the reason stands, whatever the worker says last
      else if (m.type === "done") outcome = { image: m.image };
      else outcome = { error: new FleetError(m.code, m.message) };
    });
    // Ended with nothing said: it never ran (an exec the kernel refused), or died before its first event.
    const failed = (why: string) =>
      heard
        ? new FleetError("E_INTERNAL", `${what}: the pull worker ${why} with no result`)
        : new FleetError("E_PULL_WORKER", `${what}: the pull worker ${why} before it started pulling`);
    // A spawn or a send that failed: "exit" may not follow, so this settles.
    child.once("error", (err) => {
      outcome ??= { error: failed(`failed (${err.message})`) };
      settle();
    });
    child.once("exit", (code, sig) => {
      outcome ??= { error: failed(`exited (${sig ?? `status ${code}`})`) };
      settle();
    });
    let settled = false;
    function settle(): void {
      if (settled) return;
      settled = true;
      clearTimeout(killer);
      opts.signal?.removeEventListener("abort", onAbort);
      if (outcome && "image" in outcome) resolve(outcome.image);
      else reject(outcome?.error);
    }
    child.send(request);
  });
}
