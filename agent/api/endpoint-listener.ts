/**
 * One listener of the status endpoint (TCP, or the unix socket) that keeps
 * trying when it cannot bind. A port taken by another process (a
 * host-network container can grab it while the agent restarts) or a socket
 * path in use must never stop the agent managing its containers: each failed
 * attempt is reported and tried again after a delay that doubles from 1 s
 * up to 15 s, until the listener binds or is closed.
 */
import { FleetError } from "../errors.js";
import type { LazyHttpListener } from "./lazy-http.js";

export interface BindRetry {
  /** An attempt failed; the next one comes in `retryInMs`. Must not throw. */
  onUnavailable(where: string, err: FleetError, retryInMs: number): void;
  /** The listener is bound: at once, or after failures. Must not throw. */
  onBound(where: string): void;
  firstDelayMs?: number;
  maxDelayMs?: number;
}

const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 15_000;

export class EndpointListener {
  private server: LazyHttpListener | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private delayMs: number;

  /** `where` names the listener in reports ("127.0.0.1:7780", a socket path); `bind` makes one attempt. */
  constructor(
    readonly where: string,
    private readonly bind: () => Promise<LazyHttpListener>,
    private readonly retry?: BindRetry,
  ) {
    this.delayMs = retry?.firstDelayMs ?? FIRST_DELAY_MS;
  }

  /** The bound server, or undefined while it is not bound. */
  get bound(): LazyHttpListener | undefined {
    return this.server;
  }

  /** One attempt to bind. Without `retry` a failure is thrown; with it, reported and tried again later. */
  async attempt(): Promise<void> {
    this.timer = undefined;
    let server: LazyHttpListener;
    try {
      server = await this.bind();
    } catch (err) {
      if (!this.retry) throw err;
      if (this.closed) return; // closed while this attempt ran: nobody is waiting for the endpoint any more
      const e =
        err instanceof FleetError
          ? err
          : new FleetError("E_API_UNAVAILABLE", `status endpoint cannot listen on ${this.where}: ${String(err)}`);
      this.retry.onUnavailable(this.where, e, this.delayMs);
      this.timer = setTimeout(() => void this.attempt(), this.delayMs);
      // The agent's own work keeps the process alive; a retry alone must not.
      this.timer.unref();
      this.delayMs = Math.min(this.delayMs * 2, this.retry.maxDelayMs ?? MAX_DELAY_MS);
      return;
    }
    if (this.closed) return server.close();
    this.server = server;
    this.delayMs = this.retry?.firstDelayMs ?? FIRST_DELAY_MS;
    this.retry?.onBound(this.where);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.server) await this.server.close();
  }
}
