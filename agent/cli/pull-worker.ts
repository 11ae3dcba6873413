/**
 * The pull worker's side of pull-process.ts: `fleetlet __pull-worker`, forked
 * by the daemon with an IPC channel. It reads one request, pulls through the
 * same entry point as `fleetlet pull` (CliContext.pull), sends each event and
 * then the result, and exits. It stops its pull as an interrupted one on
 * SIGTERM (CliContext.pull's handler) and when the daemon goes away (the
 * channel closes), so a worker never outlives the agent that asked for it.
 */
import { FleetError } from "../errors.js";
import type { PullEvent } from "../registry/pull.js";
import { Lease } from "../store/leases.js";
import { CliContext } from "./context.js";
import type { PullRequest, WorkerMessage } from "./pull-process.js";

function send(m: WorkerMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!process.send) return reject(new Error("the pull worker has no IPC channel to its agent"));
    process.send(m, undefined, {}, (err) => (err ? reject(err) : resolve()));
  });
}

function nextRequest(): Promise<PullRequest> {
  return new Promise((resolve, reject) => {
    const onDisconnect = () => reject(new Error("the agent closed the pull worker's channel before asking"));
    process.once("disconnect", onDisconnect);
    process.once("message", (m: PullRequest) => {
      process.off("disconnect", onDisconnect);
      resolve(m);
    });
  });
}

async function pull(req: PullRequest, signal: AbortSignal): Promise<WorkerMessage> {
  const ctx = new CliContext(req.root, req.config);
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
      ...(req.leaseId ? { lease: new Lease(store.db, req.leaseId) } : {}),
    });
    return { type: "done", image };
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown };
    const code = typeof e.code === "string" && e.code.startsWith("E_") ? e.code : "E_INTERNAL";
    return { type: "error", code: code as "E_INTERNAL", message: String(e.message ?? err) };
  }
}

/**
 * Runs one pull for the agent that forked this process; resolves with the exit
 * status (for the log only) once the result is sent. The caller exits then:
 * the HTTP client's kept-alive sockets would keep the process alive.
 */
export async function runPullWorker(): Promise<number> {
  const req = await nextRequest();
  const abort = new AbortController();
  process.once("disconnect", () =>
    abort.abort(new FleetError("E_ABORTED", `pull of ${req.ref}: the agent that asked for it went away`)),
  );
  const result = await pull(req, abort.signal);
  if (process.connected) {
    await send(result);
    process.disconnect();
  }
  return result.type === "done" ? 0 : 1;
}
