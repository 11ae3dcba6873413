/**
 * The one health gate of a deployment. A deployment is healthy when every
 * service it started runs and passes its healthcheck (or, without one,
 * simply runs). The `await-healthy` step waits for that within
 * `update.healthyWithinMs`; once the deployment is reported converged, the
 * same gate keeps its services on probation for the rest of the window, so
 * a crash soon after the start still counts against the deployment.
 */
import { FleetError } from "../errors.js";

/** The longest a converged deployment stays on probation (it never outlasts update.healthyWithinMs). */
export const PROBATION_MAX_MS = 10_000;
const POLL_MS = 100;

/** Why a service is not healthy, or undefined when it is. */
export type HealthJudge = (service: string) => string | undefined;

/** Waits `ms`, or less when `signal` aborts (never rejects). */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

export class HealthGate {
  /** Every service this deployment started, across the passes of its apply. */
  readonly started = new Set<string>();

  constructor(
    private readonly deployment: string,
    private readonly judge: HealthJudge,
  ) {}

  private failing(services: Iterable<string>): string | undefined {
    const bad = [...services].flatMap((s) => {
      const why = this.judge(s);
      return why === undefined ? [] : [`${s} (${why})`];
    });
    return bad.length ? bad.join(", ") : undefined;
  }

  /** Puts `services` on probation too, though this run did not start them (they already ran). */
  watch(services: Iterable<string>): void {
    for (const s of services) this.started.add(s);
  }

  /** Resolves once every service is healthy; E_UNHEALTHY when `withinMs` passes first. */
  async healthy(services: string[], withinMs: number, signal: AbortSignal): Promise<void> {
    this.watch(services);
    const deadline = Date.now() + withinMs;
    for (;;) {
      signal.throwIfAborted();
      const failing = this.failing(services);
      if (failing === undefined) return;
      if (Date.now() >= deadline) {
        throw new FleetError(
          "E_UNHEALTHY",
          `deployment ${this.deployment}: not healthy within ${withinMs} ms: ${failing}`,
        );
      }
      await pause(POLL_MS, signal);
    }
  }

  /**
   * Watches the started services for the rest of the window after the
   * deployment converged. Throws E_UNHEALTHY when one fails; resolves true
   * when the window closes healthy, and, when cut short by `signal`, whether
   * they were healthy at that moment. The services are looked at once more
   * as the window closes: a stalled event loop must not skip that look.
   */
  async probation(healthyWithinMs: number, signal: AbortSignal): Promise<boolean> {
    const window = Math.min(healthyWithinMs, PROBATION_MAX_MS);
    const end = Date.now() + window;
    while (this.started.size) {
      const failing = this.failing(this.started);
      if (signal.aborted) return failing === undefined;
      if (failing !== undefined) {
        throw new FleetError(
          "E_UNHEALTHY",
          `deployment ${this.deployment}: unhealthy within ${window} ms of starting: ${failing}`,
        );
      }
      const left = end - Date.now();
      if (left <= 0) break;
      await pause(Math.min(POLL_MS, left), signal);
    }
    return true;
  }
}
