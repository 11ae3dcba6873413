/**
 * The device agent: accepts desired-state documents, keeps the running
 * containers converged on them, gates each deployment on health and rolls a
 * bad one back to the last good deployment. Dependencies come in through the
 * constructor; the transport and the status endpoint only call its methods.
 */
import type { KeyObject } from "node:crypto";
import type { DesiredState } from "../../schemas/desired.js";
import type { AgentMetrics, ReportedState } from "../../schemas/reported.js";
import { FleetError } from "../errors.js";
import type { ImageRecord } from "../store/image-store.js";
import type { LocalStore } from "../store/local-store.js";
import { batches, pause, runBatch, type StepContext } from "./apply-steps.js";
import type { ContainerDriver } from "./container-driver.js";
import { type Intake, readDesired } from "./desired-intake.js";
import { DeviceServices } from "./device-services.js";
import { plan, type Step } from "./plan.js";
import { shouldRestart } from "./restart-policy.js";

export type Phase = ReportedState["phase"];

/** The longest a converged deployment stays on probation (it never outlasts update.healthyWithinMs). */
export const PROBATION_MAX_MS = 10_000;
/** The reported document must stay well inside the broker's packet limit, whatever an error says. */
const LAST_ERROR_MAX_CHARS = 2000;
const clip = (text: string, max: number) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);
export type AgentEvent = { type: string; [k: string]: unknown };

/** What the agent uses of the local store: db.json, the image records, and an image's layer dirs. */
export type AgentStore = Pick<LocalStore, "db" | "images" | "layerDirs">;

export interface AgentDeps {
  deviceId: string;
  groups?: string[];
  /** Public keys a desired document must be signed with; none: documents need no signature. */
  trustedKeys?: KeyObject[];
  runtime: ContainerDriver;
  store: AgentStore;
  pull(ref: string, signal: AbortSignal): Promise<ImageRecord>;
  version: string;
  onEvent?: (e: AgentEvent) => void;
  /** The reported state changed; `settled` when no apply is under way (its outcome is known). */
  onChange?: (settled: boolean) => void;
}

export class Agent {
  phase: Phase = "idle";
  lastError: { code: string; message: string } | null = null;
  private readonly services: DeviceServices;
  private notInWaveOf: string | undefined;
  private current: { abort: AbortController; done: Promise<void> } | undefined;
  private readonly startedAt = Date.now();
  readonly metrics: AgentMetrics = { pullBytesTotal: 0, applyDurationsMs: [], appliesTotal: 0, rollbacksTotal: 0 };

  constructor(private readonly deps: AgentDeps) {
    this.services = new DeviceServices({
      runtime: deps.runtime,
      store: deps.store,
      pull: deps.pull,
      event: (e) => this.event(e),
      changed: () => this.changed(),
    });
  }

  private get db() {
    return this.deps.store.db;
  }

  private event(e: AgentEvent): void {
    this.deps.onEvent?.({ ...e, ts: new Date().toISOString() });
  }

  private changed(): void {
    this.deps.onChange?.(this.phase !== "pulling" && this.phase !== "applying");
  }

  /** Rebuilds the actual state from the state dir: running containers are adopted, not restarted. */
  async reattach(): Promise<void> {
    // A container of ours that no service record names was left by a crash mid-swap: it goes.
    const known = new Set(Object.values(this.db.data.services).map((r) => r.containerId));
    for (const c of this.deps.runtime.list()) {
      if (c.spec.labels["fleetlet.service"] !== undefined && !known.has(c.id)) {
        await this.deps.runtime.delete(c.id, { force: true });
        this.event({ type: "orphanRemoved", container: c.id });
      }
    }
    for (const [service, rec] of Object.entries(this.db.data.services)) {
      let info: ReturnType<ContainerDriver["inspect"]>;
      try {
        info = this.deps.runtime.inspect(rec.containerId);
      } catch (err) {
        if ((err as FleetError).code !== "E_NOT_FOUND") throw err;
        delete this.db.data.services[service]; // gone while we were away: the next apply starts it anew
        continue;
      }
      // Running: adopted as it is. Exited while we were away: its restart policy
      // decides. Created but never started (a crash mid-start): started now.
      const adopt =
        info.status === "running" ||
        (info.status === "exited" && !shouldRestart(rec.spec.restart, info.exit?.exitCode ?? 1));
      if (adopt) this.services.supervise(service, rec.containerId, rec.spec, 0);
      else
        await this.services
          .recreate(service, 1)
          .catch((err: Error) => this.event({ type: "error", service, message: err.message }));
    }
    await this.db.write();
    this.changed();
    if (this.db.data.desired) void this.applyInBackground(this.db.data.desired);
  }

  /** Takes a document from the transport or a file: verifies, validates, checks its generation and wave, applies. */
  async submit(
    payload: string | Buffer | object,
    source = "desired",
    opts: { group?: string; fromTopic?: boolean } = {},
  ): Promise<"applying" | "ignored" | "rejected"> {
    let intake: Intake;
    const fromGroup = opts.group !== undefined;
    const target = opts.fromTopic ? (fromGroup ? `group/${opts.group}` : `device/${this.deps.deviceId}`) : undefined;
    try {
      intake = readDesired(payload, {
        deviceId: this.deps.deviceId,
        source,
        fromGroup,
        trustedKeys: this.deps.trustedKeys ?? [],
        ...(target ? { target } : {}),
      });
    } catch (err) {
      this.reject(
        err instanceof FleetError ? err : new FleetError("E_INVALID_DESIRED", `${source}: ${(err as Error).message}`),
      );
      return "rejected";
    }
    const { doc } = intake;
    if (intake.kind === "notInWave") {
      // Said once per deployment, not at every wave that still leaves this device out.
      if (this.notInWaveOf !== doc.deployment)
        this.event({
          type: "notInWave",
          deployment: doc.deployment,
          generation: doc.generation,
          percent: doc.rollout.percent,
        });
      this.notInWaveOf = doc.deployment;
      return "ignored";
    }
    // Each topic counts its own generations: a device document is not measured against its groups'.
    const key = fromGroup ? `group:${opts.group}` : "device";
    const { generations } = this.db.data;
    const seen = generations[key] ?? (Object.keys(generations).length ? null : this.db.data.generation);
    if (seen !== null && doc.generation <= seen) {
      this.event({
        type: "ignored",
        deployment: doc.deployment,
        generation: doc.generation,
        reason: `generation ${doc.generation} is not newer than ${seen}`,
      });
      return "ignored";
    }
    generations[key] = doc.generation;
    if (intake.kind === "rollback") return this.rollBackOnRequest(doc);
    // Persisted before anything changes, so a crash mid-apply resumes it.
    // From here the reported generation is the new one: never with the old phase,
    // so the phase changes with it, before the write lets a report go out.
    this.db.data.desired = doc;
    this.db.data.generation = doc.generation;
    this.db.data.desiredSource = key;
    this.phase = "pulling";
    this.lastError = null;
    await this.db.write();
    void this.applyInBackground(doc);
    return "applying";
  }

  /** An operator's rollback of `doc.deployment`: restores the deployment that was good before it. */
  private async rollBackOnRequest(doc: DesiredState): Promise<"applying" | "ignored" | "rejected"> {
    const { desired, lastGood, previousGood } = this.db.data;
    if (desired?.deployment !== doc.deployment) {
      this.event({
        type: "ignored",
        deployment: doc.deployment,
        generation: doc.generation,
        reason: `rollback of ${doc.deployment}, which this device does not run`,
      });
      return "ignored";
    }
    const target = lastGood && lastGood.deployment !== doc.deployment ? lastGood : previousGood;
    if (!target || target.deployment === doc.deployment) {
      this.reject(
        new FleetError(
          "E_NO_ROLLBACK_TARGET",
          `rollback of ${doc.deployment} requested, but this device has no earlier good deployment to restore; it keeps running ${doc.deployment}`,
        ),
      );
      return "rejected";
    }
    // The restored document takes the rollback's generation, so replaying the rolled-back one is ignored.
    const restored: DesiredState = { ...target, generation: doc.generation };
    this.db.data.desired = restored;
    this.db.data.generation = doc.generation;
    this.phase = "pulling";
    this.lastError = null;
    await this.db.write();
    this.event({
      type: "rollingBack",
      deployment: doc.deployment,
      to: target.deployment,
      reason: "requested by the operator",
    });
    void this.applyInBackground(restored, {
      code: "E_ROLLED_BACK",
      message: `the operator rolled ${doc.deployment} back; restored ${target.deployment}`,
    });
    return "applying";
  }

  reject(err: FleetError): void {
    this.phase = "rejected";
    this.lastError = err.toJSON();
    this.event({ type: "rejected", code: err.code, message: err.message });
    this.changed();
  }

  /** Starts applying `doc`, cancelling an apply in progress; resolves when this apply settles. */
  applyInBackground(doc: DesiredState, rolledBack?: { code: FleetError["code"]; message: string }): Promise<void> {
    const previous = this.current;
    // A rollback says so: the deployment it cuts short must not count as good.
    previous?.abort.abort(
      new FleetError(
        rolledBack ? "E_ROLLED_BACK" : "E_ABORTED",
        `superseded by generation ${doc.generation}${rolledBack ? " (a rollback)" : ""}`,
      ),
    );
    const abort = new AbortController();
    const done = (async () => {
      await previous?.done;
      await this.applyWithRollback(doc, abort.signal, rolledBack);
    })();
    this.current = { abort, done };
    return done;
  }

  /** Resolves once nothing is being applied. */
  async idle(): Promise<void> {
    while (this.current) {
      const c = this.current;
      await c.done;
      if (this.current === c) this.current = undefined;
    }
  }

  /** Applies `doc`; `rolledBack` makes a success report phase rolledBack with that reason (an operator's rollback). */
  private async applyWithRollback(
    doc: DesiredState,
    signal: AbortSignal,
    rolledBack?: { code: FleetError["code"]; message: string },
  ): Promise<void> {
    const t0 = performance.now();
    this.metrics.appliesTotal++;
    try {
      const changed = await this.applyDoc(doc, signal);
      if (signal.aborted) return; // superseded: the newer apply owns the phase now
      this.phase = rolledBack ? "rolledBack" : "converged";
      this.lastError = rolledBack ?? null;
      this.event(
        rolledBack
          ? { type: "rolledBack", to: doc.deployment, reason: rolledBack.message }
          : { type: "converged", deployment: doc.deployment, generation: doc.generation },
      );
      if (rolledBack) this.metrics.rollbacksTotal++;
      this.changed();
      // Converged is reported at once; the new services stay on probation for
      // the rest of the health window, and a crash in it still rolls back.
      const healthy = await this.probation(doc, changed, signal);
      // Cut short by a newer document while healthy, it counts as good; never when
      // unhealthy at that moment, nor when an operator's rollback cut it short.
      if (!healthy || (signal.aborted && (signal.reason as FleetError | undefined)?.code === "E_ROLLED_BACK")) return;
      this.markGood(doc);
      await this.db.write();
    } catch (err) {
      if (signal.aborted) return; // a newer document took over
      const e = err instanceof FleetError ? err : new FleetError("E_RUNTIME", (err as Error).message);
      const good = this.db.data.lastGood;
      if (doc.update.rollback && good && good.deployment !== doc.deployment) {
        this.event({
          type: "rollingBack",
          deployment: doc.deployment,
          to: good.deployment,
          code: e.code,
          reason: e.message,
        });
        try {
          await this.applyDoc(good, signal);
          this.metrics.rollbacksTotal++;
          this.phase = "rolledBack";
          this.lastError = { code: e.code, message: `${e.message}; rolled back to ${good.deployment}` };
          this.event({ type: "rolledBack", deployment: doc.deployment, to: good.deployment, reason: e.message });
        } catch (again) {
          this.phase = "failed";
          this.lastError = {
            code: e.code,
            message: `${e.message}; the rollback to ${good.deployment} failed too: ${(again as Error).message}`,
          };
          this.event({ type: "failed", deployment: doc.deployment, code: e.code, message: this.lastError.message });
        }
      } else {
        this.phase = "failed";
        this.lastError = e.toJSON();
        this.event({ type: "failed", deployment: doc.deployment, code: e.code, message: e.message });
      }
    } finally {
      this.metrics.applyDurationsMs.push(performance.now() - t0);
      if (this.metrics.applyDurationsMs.length > 100) this.metrics.applyDurationsMs.shift();
      this.changed();
    }
  }

  private markGood(doc: DesiredState): void {
    const { lastGood } = this.db.data;
    if (lastGood && lastGood.deployment !== doc.deployment) this.db.data.previousGood = lastGood;
    this.db.data.lastGood = doc;
  }

  /** Watches the services a deployment changed until its health window closes; false when cut short while one was not healthy. */
  private async probation(doc: DesiredState, services: string[], signal: AbortSignal): Promise<boolean> {
    const window = Math.min(doc.update.healthyWithinMs, PROBATION_MAX_MS);
    const end = Date.now() + window;
    while (services.length && Date.now() < end) {
      const failing = services
        .map((s) => [s, this.services.unhealthyReason(s)] as const)
        .filter(([, why]) => why !== undefined);
      // Superseded or stopping: the window is cut short, and its health so far decides.
      if (signal.aborted) return failing.length === 0;
      if (failing.length) {
        const detail = failing.map(([s, why]) => `${s} (${why})`).join(", ");
        throw new FleetError(
          "E_UNHEALTHY",
          `deployment ${doc.deployment}: unhealthy within ${window} ms of starting: ${detail}`,
        );
      }
      await pause(100, signal);
    }
    return true;
  }

  /** Applies `doc`; resolves with the services it started or replaced. */
  private async applyDoc(doc: DesiredState, signal: AbortSignal): Promise<string[]> {
    const images = new Map<string, ImageRecord>();
    const ctx: StepContext = {
      signal,
      deployment: doc.deployment,
      images,
      pull: (ref, s) => this.deps.pull(ref, s),
      startService: (service, spec, hash, id, image, deployment) =>
        this.services.startService(service, spec, hash, id, image, deployment, 0),
      stopContainer: (service, id, timeoutMs, sig) => this.services.stopContainer(service, id, timeoutMs, sig),
      removeContainer: (service, id) => this.services.removeContainer(service, id),
      unhealthyReason: (service) => this.services.unhealthyReason(service),
      event: (e) => this.event(e),
    };
    const run = async (steps: Step[]) => {
      for (const batch of batches(steps)) {
        signal.throwIfAborted();
        await runBatch(batch, ctx);
        this.changed();
      }
    };
    if (doc.update.strategy === "stop-then-download") {
      // Short of disk: whatever will change stops and goes before a byte is
      // downloaded. Digests come from the local store; an image not there yet
      // means its service changes.
      this.phase = "applying";
      const local = new Map(
        Object.values(doc.services).flatMap((spec) => {
          const rec = this.deps.store.images.get(spec.image);
          return rec ? [[spec.image, rec.digest] as const] : [];
        }),
      );
      await run(
        plan(doc, this.services.actualServices(), local).filter((s) => s.kind === "stop" || s.kind === "remove"),
      );
    }
    this.phase = "pulling";
    this.changed();
    for (const spec of Object.values(doc.services)) {
      if (images.has(spec.image)) continue;
      this.event({ type: "pulling", image: spec.image });
      images.set(spec.image, await this.deps.pull(spec.image, signal));
    }
    const digests = new Map([...images].map(([ref, rec]) => [ref, rec.digest]));
    const steps = plan(doc, this.services.actualServices(), digests);
    this.phase = "applying";
    this.changed();
    await run(steps);
    return steps.flatMap((s) => (s.kind === "start" ? [s.service] : []));
  }

  /** POST /v1/services/<name>/restart. */
  restartService(service: string): Promise<void> {
    return this.services.restartService(service);
  }

  logs(service: string, tail?: number): string {
    return this.services.logs(service, tail);
  }

  reported(): ReportedState {
    const services = this.services.reports();
    const desired = this.db.data.desired;
    return {
      deviceId: this.deps.deviceId,
      deployment: desired?.deployment ?? null,
      generation: desired?.generation ?? null,
      phase: this.phase,
      lastGood: this.db.data.lastGood?.deployment ?? null,
      source: this.db.data.desiredSource,
      groups: this.deps.groups ?? [],
      services,
      lastError: this.lastError && {
        code: this.lastError.code,
        message: clip(this.lastError.message, LAST_ERROR_MAX_CHARS),
      },
      agent: {
        version: this.deps.version,
        uptimeSec: Math.round((Date.now() - this.startedAt) / 1000),
        cgroupMode: this.deps.runtime.cgroups.mode,
      },
      ts: new Date().toISOString(),
    };
  }

  /** Stops watching; the containers keep running for the next agent to adopt. */
  async stop(): Promise<void> {
    this.current?.abort.abort(new FleetError("E_ABORTED", "the agent is stopping"));
    await this.current?.done;
    this.services.detachAll();
  }
}
