/**
 * Watches one service's container: learns of its exit from the runtime (no
 * polling), restarts it by policy with exponential backoff, and runs its
 * healthcheck inside the container on an interval.
 */
import type { ExitRecord } from "../../schemas/container.js";
import type { ServiceSpec } from "../../schemas/desired.js";
import type { ContainerDriver } from "./container-driver.js";
import { BACKOFF_RESET_MS, restartDelay, shouldRestart } from "./restart-policy.js";

export type Health = "starting" | "healthy" | "unhealthy" | "none";
export type SupervisedState = "running" | "restarting" | "exited" | "failed";

export interface SupervisorEvents {
  event(e: { type: string; service: string; [k: string]: unknown }): void;
  /** Recreates the service's container; called when the policy says restart. */
  restart(service: string, failures: number): Promise<void>;
  changed(): void;
}

/** A service without a healthcheck counts as healthy once it runs; the deployment's probation catches a quick crash. */
export const STABLE_MS = 0;

export class ServiceSupervisor {
  health: Health;
  state: SupervisedState = "running";
  lastExit: ExitRecord | undefined;
  readonly startedAt = Date.now();
  private readonly abort = new AbortController();
  private failuresInRow = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly service: string,
    readonly containerId: string,
    private readonly spec: ServiceSpec,
    private readonly runtime: ContainerDriver,
    private readonly on: SupervisorEvents,
    /** Consecutive failed runs before this one, for the backoff. */
    readonly failures = 0,
  ) {
    this.health = spec.healthcheck ? "starting" : "none";
  }

  start(): void {
    this.runtime.wait(this.containerId, this.abort.signal).then(
      (exit) => this.exited(exit),
      (err: Error) => {
        if (this.abort.signal.aborted) return; // we stopped watching on purpose
        this.on.event({ type: "error", service: this.service, message: err.message });
      },
    );
    if (this.spec.healthcheck) this.scheduleCheck(0);
  }

  /** Stops watching (before the agent stops or replaces the container itself). */
  detach(): void {
    this.abort.abort();
    if (this.timer) clearTimeout(this.timer);
  }

  /** Healthy for a deployment's gate: running, and its healthcheck passed (or, without one, running a moment). */
  isHealthy(): boolean {
    if (this.state !== "running") return false;
    if (this.spec.healthcheck) return this.health === "healthy";
    return Date.now() - this.startedAt >= STABLE_MS;
  }

  private scheduleCheck(delay: number): void {
    this.timer = setTimeout(() => void this.check(), delay);
  }

  private async check(): Promise<void> {
    const hc = this.spec.healthcheck!;
    if (this.abort.signal.aborted || this.state !== "running") return;
    try {
      const r = await this.runtime.exec(this.containerId, hc.exec, {
        timeoutMs: hc.timeoutMs,
        signal: this.abort.signal,
      });
      if (r.exitCode === 0) {
        this.failuresInRow = 0;
        this.setHealth("healthy");
      } else if (++this.failuresInRow >= hc.retries) {
        this.setHealth("unhealthy", `healthcheck exited ${r.exitCode}: ${r.output.trim().slice(0, 200)}`);
      }
    } catch (err) {
      if (this.abort.signal.aborted) return;
      if (++this.failuresInRow >= hc.retries) this.setHealth("unhealthy", (err as Error).message);
    }
    if (!this.abort.signal.aborted && this.state === "running") this.scheduleCheck(hc.intervalMs);
  }

  private setHealth(health: Health, reason?: string): void {
    if (this.health === health) return;
    this.health = health;
    if (health === "unhealthy") this.on.event({ type: "unhealthy", service: this.service, reason });
    this.on.changed();
  }

  private exited(exit: ExitRecord): void {
    if (this.abort.signal.aborted) return;
    this.lastExit = exit;
    if (this.timer) clearTimeout(this.timer);
    const ranFor = Date.now() - this.startedAt;
    this.on.event({ type: "exited", service: this.service, exitCode: exit.exitCode, oomKilled: exit.oomKilled });
    if (!shouldRestart(this.spec.restart, exit.exitCode)) {
      this.state = exit.exitCode === 0 ? "exited" : "failed";
      this.on.changed();
      return;
    }
    const failures = ranFor >= BACKOFF_RESET_MS ? 1 : this.failures + 1;
    const delay = restartDelay(failures);
    this.state = "restarting";
    this.on.changed();
    this.on.event({ type: "restarting", service: this.service, inMs: delay, failures });
    this.timer = setTimeout(() => {
      if (this.abort.signal.aborted) return;
      this.on.restart(this.service, failures).catch((err: Error) => {
        this.state = "failed";
        this.on.event({ type: "error", service: this.service, message: err.message });
        this.on.changed();
      });
    }, delay);
  }
}
