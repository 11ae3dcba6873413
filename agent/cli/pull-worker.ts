/**
 * The pull worker's side of pull-process.ts: `fleetlet __pull-worker`, forked
 * by the daemon with an IPC channel. It takes one request at a time, pulls
 * through the same entry point as `fleetlet pull` (CliContext.pull), sends
 * each event and then the result, and waits for the next request; one
 * CliContext per state root and config, so later pulls (the next service's
 * image, the tag an apply resolves again) reuse its registry connections,
 * TLS sessions and tokens. It exits once no request came for its idle time,
 * or when the daemon goes away (the channel closes: a pull under way stops as
 * an interrupted one), and stops a pull as interrupted on SIGTERM
 * (CliContext.pull's handler), so a worker never outlives the agent that
 * asked for it.
 */
import { flushCompileCache } from "node:module";
import { FleetError } from "../errors.js";
import type { PullEvent } from "../registry/pull.js";
import type { StateDb } from "../state/db.js";
import { Lease } from "../store/leases.js";
import { CliContext } from "./context.js";
import { PULL_WORKER_IDLE_ENV, type PullRequest, type WorkerMessage } from "./pull-process.js";

function send(m: WorkerMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!process.send) return reject(new Error("the pull worker has no IPC channel to its agent"));
    process.send(m, undefined, {}, (err) => (err ? reject(err) : resolve()));
  });
}

/** The next request; undefined when the channel closed or none came within `idleMs` (if given). */
function nextRequest(idleMs: number | undefined): Promise<PullRequest | undefined> {
  return new Promise((resolve) => {
    const done = (m: PullRequest | undefined) => {
      clearTimeout(timer);
      process.off("disconnect", onDisconnect);
      process.off("message", done);
      resolve(m);
    };
    const onDisconnect = () => done(undefined);
    const timer = idleMs === undefined ? undefined : setTimeout(() => done(undefined), idleMs);
    process.once("disconnect", onDisconnect);
    process.once("message", done);
  });
}

/** One context per state root and config: its registry clients outlive a pull. */
const contexts = new Map<string, CliContext>();
function contextFor(req: PullRequest): CliContext {
  const key = JSON.stringify([req.root, req.config]);
  const ctx = contexts.get(key) ?? new CliContext(req.root, req.config);
  contexts.set(key, ctx);
  return ctx;
}

/**
 * One Lease object per lease id: the registry clients keep a deployment's tag
 * resolutions by its lease object, so the pulls of one apply share them.
 * A worker lives for one burst of applies, so these stay few.
 */
const leases = new Map<string, Lease>();
function leaseFor(db: StateDb, id: string): Lease {
  const lease = leases.get(id) ?? new Lease(db, id);
  leases.set(id, lease);
  return lease;
}

async function pull(req: PullRequest, signal: AbortSignal): Promise<WorkerMessage> {
  const ctx = contextFor(req);
  const onEvent = (event: PullEvent) => {
    // Harmless to drop: a send fails only once the channel is closed, and then the
    // pull is being aborted (the "disconnect" handler) and nobody is listening.
    send({ type: "event", event }).catch(() => undefined);
  };
  try {
    const store = await ctx.store();
    const image = await ctx.pull(req.ref, {
      quiet: true,
      onEvent,
      signal,
      unpack: req.unpack,
      ...(req.maxRate !== undefined ? { maxRate: req.maxRate } : {}),
      ...(req.platform ? { platform: req.platform } : {}),
      ...(req.leaseId ? { lease: leaseFor(store.db, req.leaseId) } : {}),
    });
    return { type: "done", image };
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown };
    const code = typeof e.code === "string" && e.code.startsWith("E_") ? e.code : "E_INTERNAL";
    return { type: "error", code: code as "E_INTERNAL", message: String(e.message ?? err) };
  }
}

/**
 * Runs the pulls the agent that forked this process asks for, one at a time,
 * until it asks for none within its idle time (the first request comes at
 * once) or goes away; resolves with the exit status (for the log only). The
 * caller exits then: the HTTP client's kept-alive sockets would keep the
 * process alive.
 */
export async function runPullWorker(): Promise<number> {
  const idleMs = Number(process.env[PULL_WORKER_IDLE_ENV] ?? 0) || 0;
  let status = 0;
  for (let first = true; ; first = false) {
    if (!first && idleMs === 0) break;
    const req = await nextRequest(first ? undefined : idleMs);
    if (!req) break;
    const abort = new AbortController();
    const onDisconnect = () =>
      abort.abort(new FleetError("E_ABORTED", `pull of ${req.ref}: the agent that asked for it went away`));
    process.once("disconnect", onDisconnect);
    const result = await pull(req, abort.signal);
    process.off("disconnect", onDisconnect);
    if (!process.connected) break;
    await send(result);
    status = result.type === "done" ? 0 : 1;
    // The code its first pull compiled, to the state root's compile cache now, not when it exits after waiting.
    if (first) flushCompileCache();
  }
  if (process.connected) process.disconnect();
  return status;
}
