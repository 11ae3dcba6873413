/**
 * The agent's local status endpoint, and what the agent says while it cannot
 * serve it. A listener that cannot bind (its TCP port taken, its socket path
 * in use or unusable) is retried in the background while the agent goes on
 * managing its containers. Until every listener is bound, the reported state
 * carries E_API_UNAVAILABLE in `lastError` — unless the agent has a more
 * important error to report there — and an `apiUnavailable` event goes out
 * once per outage, an `apiAvailable` one when it ends.
 */
import type { DeviceConfig } from "../../schemas/config.js";
import type { ReportedState } from "../../schemas/reported.js";
import { type StatusServer, type StatusSource, startStatusServer } from "../api/status-server.js";
import type { FleetError } from "../errors.js";
import type { Agent } from "../reconcile/agent.js";

export interface EndpointReports {
  /** Called when the reported state changed because of the endpoint. */
  changed(): void;
  event(e: { type: string; [k: string]: unknown }): void;
  warn(line: string): void;
}

export class StatusEndpoint {
  /** The listeners that cannot bind right now, by where they listen, with what stops them. */
  private readonly unavailable = new Map<string, FleetError>();
  private server: StatusServer | undefined;

  constructor(
    private readonly agent: Agent,
    private readonly reports: EndpointReports,
  ) {}

  /** The agent's reported state, with the endpoint's trouble in `lastError` when nothing else is there. */
  reported(): ReportedState {
    const r = this.agent.reported();
    const [where, err] = [...this.unavailable][0] ?? [];
    if (r.lastError !== null || !where || !err) return r;
    return {
      ...r,
      lastError: {
        code: "E_API_UNAVAILABLE",
        message: `the status endpoint is not listening on ${where} (retrying): ${err.message}`,
      },
    };
  }

  /** Starts the listeners; resolves after their first attempt, bound or not. */
  async start(config: DeviceConfig): Promise<void> {
    const agent = this.agent;
    const source: StatusSource = {
      reported: () => this.reported(),
      metrics: () => agent.metrics,
      logs: (s, t) => agent.logs(s, t),
      restart: (s) => agent.restartService(s),
    };
    this.server = await startStatusServer({
      listen: config.api.listen,
      socket: config.api.socket,
      ...(config.api.token ? { token: config.api.token } : {}),
      source,
      retry: { onUnavailable: (w, e, ms) => this.failed(w, e, ms), onBound: (w) => this.bound(w) },
    });
  }

  /** Where the endpoint listens, for the start-up line: "127.0.0.1:7780 and /run/fleetlet/api.sock (retrying)". */
  describe(config: DeviceConfig): string {
    const where = [config.api.listen, config.api.socket].filter(Boolean);
    return where.map((w) => (this.unavailable.has(w) ? `${w} (retrying)` : w)).join(" and ");
  }

  private failed(where: string, err: FleetError, retryInMs: number): void {
    const first = !this.unavailable.has(where);
    this.unavailable.set(where, err);
    if (!first) return;
    this.reports.warn(`${err.message} [${err.code}]; the agent runs on and retries (next in ${retryInMs} ms)`);
    this.reports.event({ type: "apiUnavailable", code: "E_API_UNAVAILABLE", listen: where, message: err.message });
    this.reports.changed();
  }

  private bound(where: string): void {
    if (!this.unavailable.delete(where)) return;
    this.reports.warn(`status endpoint now listening on ${where}`);
    this.reports.event({ type: "apiAvailable", listen: where });
    this.reports.changed();
  }

  close(): Promise<void> {
    return this.server?.close() ?? Promise.resolve();
  }
}
