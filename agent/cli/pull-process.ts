/**
 * The daemon's pulls, in a child process (the pull worker, pull-worker.ts):
 * the same Node and the same CLI script, forked with an IPC channel. The
 * registry client and the HTTP/TLS stack are loaded there and never in the
 * daemon, which idles for days between pulls: their memory goes back to the
 * system with the child. A worker whose pull is done waits `idleMs` for the
 * next one (one is kept), so the pulls of an apply, and the tags the next
 * apply resolves again, reuse its connections, TLS sessions and tokens
 * instead of paying a process start and a TLS handshake each; then it exits.
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
import { type ChildProcess, fork } from "node:child_process";
import type { DeviceConfig } from "../../schemas/config.js";
import { type ErrorCode, FleetError } from "../errors.js";
import type { Platform } from "../registry/platform.js";
import type { PullEvent } from "../registry/pull.js";
import type { ImageRecord } from "../store/image-store.js";

/** The hidden first argument that makes `fleetlet` a pull worker. */
export const PULL_WORKER_COMMAND = "__pull-worker";
/** Between SIGTERM and SIGKILL for a worker whose pull was aborted. */
export const KILL_AFTER_MS = 5_000;
/** How long the daemon's worker waits for another pull once one is done. */
export const PULL_WORKER_IDLE_MS = 30_000;
/** How the worker is told its idle time. */
export const PULL_WORKER_IDLE_ENV = "FLEETLET_PULL_WORKER_IDLE_MS";

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
  /** How long the worker waits for another pull once this one is done; 0 (the default): it exits. */
  idleMs?: number;
}

type Outcome = { image: ImageRecord } | { error: unknown };

/** The worker waiting for a pull, if any, with the options it was forked with. */
let spare: { key: string; child: ChildProcess } | undefined;

function takeSpare(key: string): ChildProcess | undefined {
  const kept = spare;
  if (!kept || kept.key !== key || !kept.child.connected) return undefined;
  spare = undefined;
  kept.child.removeAllListeners("exit");
  kept.child.removeAllListeners("error");
  kept.child.ref();
  kept.child.channel?.ref();
  return kept.child;
}

/** Keeps a worker whose pull is done for the next; one is kept, and a waiting worker holds no caller open. */
function keepSpare(key: string, child: ChildProcess): void {
  if (spare || !child.connected) {
    if (child.connected) child.disconnect(); // it exits: its channel closed
    return;
  }
  spare = { key, child };
  child.unref();
  child.channel?.unref();
  child.once("exit", () => {
    if (spare?.child === child) spare = undefined;
  });
  // A waiting worker is asked nothing; an error it raised (a failed kill) must not go unheard and stop the agent.
  child.on("error", () => undefined);
}

/** Lets the waiting worker go (it exits once its channel closes): before the agent stops or re-executes. */
export function releaseSpareWorker(): void {
  const kept = spare;
  spare = undefined;
  if (kept?.child.connected) kept.child.disconnect();
}

function forkWorker(root: string, opts: WorkerOptions): ChildProcess {
  // The worker's stderr is the daemon's: a crash's trace lands in its log.
  // None of the bulk malloc tunables (system/process-memory.ts, BULK_MALLOC_TUNABLES): the daemon's env has none to pass.
  // FLEETLET_ROOT: the root whose compile cache its start uses (cli/startup-cache.ts); its pulls name theirs.
  return fork(opts.script, [PULL_WORKER_COMMAND], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
    execArgv: opts.execArgv ?? process.execArgv,
    env: { ...process.env, FLEETLET_ROOT: root, [PULL_WORKER_IDLE_ENV]: String(opts.idleMs ?? 0) },
  });
}

/**
 * Pulls `request.ref` in a pull worker (the waiting one, or a new one);
 * resolves with its image record. A waiting worker whose idle time ran out
 * just as it was asked ends without a word: the pull goes to a new one then.
 */
export async function pullInWorker(request: PullRequest, opts: WorkerOptions): Promise<ImageRecord> {
  opts.signal?.throwIfAborted();
  const key = JSON.stringify([opts.script, opts.execArgv ?? process.execArgv, opts.idleMs ?? 0, request.root]);
  const waiting = takeSpare(key);
  if (waiting) {
    try {
      return await pullIn(waiting, key, request, opts);
    } catch (err) {
      if ((err as FleetError).code !== "E_PULL_WORKER") throw err;
    }
  }
  return pullIn(forkWorker(request.root, opts), key, request, opts);
}

function pullIn(child: ChildProcess, key: string, request: PullRequest, opts: WorkerOptions): Promise<ImageRecord> {
  const what = `pull of ${request.ref}`;
  return new Promise((resolve, reject) => {
    let outcome: Outcome | undefined;
    let heard = false; // a message came: the worker ran
    let aborted = false;
    let killer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      aborted = true;
      outcome = { error: opts.signal?.reason };
      child.kill("SIGTERM");
      killer = setTimeout(() => child.kill("SIGKILL"), KILL_AFTER_MS);
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const onMessage = (m: WorkerMessage) => {
      heard = true;
      if (m.type === "event") opts.onEvent?.(m.event);
      else if (aborted)
        return; // the reason stands, whatever the worker says last; it is settled when it has exited
      else {
        outcome = m.type === "done" ? { image: m.image } : { error: new FleetError(m.code, m.message) };
        settle(true);
      }
    };
    // Ended with nothing said: it never ran (an exec the kernel refused), or died before its first event.
    const failed = (why: string) =>
      heard
        ? new FleetError("E_INTERNAL", `${what}: the pull worker ${why} with no result`)
        : new FleetError("E_PULL_WORKER", `${what}: the pull worker ${why} before it started pulling`);
    // A spawn or a send that failed: "exit" may not follow, so this settles.
    const onError = (err: Error) => {
      outcome ??= { error: failed(`failed (${err.message})`) };
      settle(false);
    };
    const onExit = (code: number | null, sig: NodeJS.Signals | null) => {
      outcome ??= { error: failed(`exited (${sig ?? `status ${code}`})`) };
      settle(false);
    };
    child.on("message", onMessage);
    child.once("error", onError);
    child.once("exit", onExit);
    let settled = false;
    function settle(answered: boolean): void {
      if (settled) return;
      settled = true;
      clearTimeout(killer);
      opts.signal?.removeEventListener("abort", onAbort);
      child.off("message", onMessage);
      child.off("error", onError);
      child.off("exit", onExit);
      if (answered && (opts.idleMs ?? 0) > 0) keepSpare(key, child);
      if (outcome && "image" in outcome) resolve(outcome.image);
      else reject(outcome?.error);
    }
    child.send(request);
  });
}
