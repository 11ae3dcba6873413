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
import { type Acceptance, generationSeen, recordAcceptance } from "./acceptance.js";
import type { AgentStore, PullImage } from "./agent-store.js";
import type { ContainerDriver } from "./container-driver.js";
import { type AgentEvent, type Outcome, type Phase, type RunHost, runDeployment, STOPPING } from "./deployment-run.js";
import { type Intake, readDesired } from "./desired-intake.js";
import { DeviceServices, type DeviceServicesDeps } from "./device-services.js";
import { type DevicePolicy, enforcePolicy } from "./policy.js";

export type { AgentEvent, Phase } from "./deployment-run.js";
export { PROBATION_MAX_MS } from "./health-gate.js";

/** The reported document must stay well inside the broker's packet limit, whatever an error says. */
const LAST_ERROR_MAX_CHARS = 2000;
const clip = (text: string, max: number) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

/** `deviceWatch`: host devices coming and going (services wait for theirs and follow them). */
export interface AgentDeps extends Pick<DeviceServicesDeps, "deviceWatch"> {
  deviceId: string;
  groups?: string[];
  /** Public keys a signed desired document must verify with. */
  trustedKeys?: KeyObject[];
  /** What a document may ask for (agent/reconcile/policy.ts), and whether it must be signed. */
  policy: DevicePolicy;
  runtime: ContainerDriver;
  store: AgentStore;
  pull: PullImage;
  version: string;
  onEvent?: (e: AgentEvent) => void;
  /** The reported state changed; `settled` when no apply is under way (its outcome is known). */
  onChange?: (settled: boolean) => void;
}

export type SubmitResult = "applying" | "ignored" | "rejected";

export class Agent {
  phase: Phase = "idle";
  lastError: { code: string; message: string } | null = null;
  private readonly services: DeviceServices;
  private readonly host: RunHost;
  private notInWaveOf: string | undefined;
  private current: { abort: AbortController; done: Promise<void> } | undefined;
  private readonly startedAt = Date.now();
  readonly metrics: AgentMetrics = { pullBytesTotal: 0, applyDurationsMs: [], appliesTotal: 0, rollbacksTotal: 0 };

  constructor(private readonly deps: AgentDeps) {
    const event = (e: AgentEvent) => this.event(e);
    const changed = () => this.changed();
    const defaultLimits = deps.policy.defaults;
    this.services = new DeviceServices({ ...deps, event, changed, defaultLimits });
    this.host = {
      store: deps.store,
      policy: deps.policy,
      services: this.services,
      pull: deps.pull,
      metrics: this.metrics,
      setPhase: (phase, lastError) => {
        this.phase = phase;
        if (lastError !== undefined) this.lastError = lastError;
      },
      event,
      changed,
    };
  }

  private get db() {
    return this.deps.store.db;
  }

  private event(e: AgentEvent): void {
    this.deps.onEvent?.({ ...e, ts: new Date().toISOString() });
  }

  /** Whether the device refuses unsigned documents (and so an empty message that would clear a topic). */
  get requiresSignatures(): boolean {
    return this.deps.policy.requireSigned;
  }

  private changed(): void {
    this.deps.onChange?.(this.phase !== "pulling" && this.phase !== "applying");
  }

  /** Rebuilds the actual state from the state dir: running containers are adopted, not restarted. */
  async reattach(): Promise<void> {
    await this.db.refresh();
    await this.services.adopt();
    this.changed();
    const stored = this.db.data.desired;
    if (!stored) return;
    // The policy may have changed since the document was accepted: what it no longer allows is not applied again.
    let doc: DesiredState;
    try {
      doc = enforcePolicy(stored, this.deps.policy, "db.json desired");
    } catch (err) {
      if (!(err instanceof FleetError)) throw err;
      this.reject(err);
      return;
    }
    void this.applyInBackground(doc);
  }

  /** Takes a document from the transport or a file: verifies, validates, checks its generation and wave, applies. */
  async submit(
    payload: string | Buffer | object,
    source = "desired",
    opts: { group?: string; fromTopic?: boolean } = {},
  ): Promise<SubmitResult> {
    const intake = this.intake(payload, source, opts.group, opts.fromTopic === true);
    if (!intake) return "rejected";
    const { doc } = intake;
    if (intake.kind === "notInWave") {
      // Said once per deployment, not at every wave that still leaves this device out.
      const { deployment, generation } = doc;
      if (this.notInWaveOf !== deployment) {
        this.event({ type: "notInWave", deployment, generation, percent: doc.rollout.percent });
      }
      this.notInWaveOf = deployment;
      return "ignored";
    }
    // Each topic counts its own generations: a device document is not measured against its groups'.
    const key = opts.group !== undefined ? `group:${opts.group}` : "device";
    const seen = generationSeen(this.db.data, key);
    if (seen !== null && doc.generation <= seen) {
      const reason = `generation ${doc.generation} is not newer than ${seen}`;
      this.event({ type: "ignored", deployment: doc.deployment, generation: doc.generation, reason });
      return "ignored";
    }
    const acceptance = { doc, key, signed: intake.signed, previousGeneration: seen };
    if (intake.kind === "rollback") return this.rollBackOnRequest(acceptance);
    await this.accept({ ...acceptance, desired: doc });
    void this.applyInBackground(doc);
    return "applying";
  }

  /**
   * Whether a message from a desired topic may take that topic's place among
   * the documents the device follows (desired-sources.ts): only one that
   * passes the signature, schema, target, expiry and policy checks, and is
   * not older than what the topic already gave (a replay). A refused message
   * is reported (`rejected`, lastError) and changes nothing else.
   */
  admit(payload: Buffer, source: string, opts: { group?: string } = {}): boolean {
    const intake = this.intake(payload, source, opts.group, true);
    if (!intake) return false;
    const { doc } = intake;
    const seen = generationSeen(this.db.data, opts.group !== undefined ? `group:${opts.group}` : "device");
    if (seen !== null && doc.generation < seen) {
      const reason = `generation ${doc.generation} is older than ${seen}, which this device accepted from the same topic: a replay, not followed`;
      this.event({ type: "ignored", deployment: doc.deployment, generation: doc.generation, reason });
      return false;
    }
    return true;
  }

  /** The document read, verified and validated, or undefined once it has been rejected. */
  private intake(payload: string | Buffer | object, source: string, group: string | undefined, fromTopic: boolean) {
    const fromGroup = group !== undefined;
    const target = fromTopic ? (fromGroup ? `group/${group}` : `device/${this.deps.deviceId}`) : undefined;
    try {
      return readDesired(payload, {
        deviceId: this.deps.deviceId,
        source,
        fromGroup,
        trustedKeys: this.deps.trustedKeys ?? [],
        policy: this.deps.policy,
        acceptedGeneration: generationSeen(this.db.data, fromGroup ? `group:${group}` : "device"),
        ...(target ? { target } : {}),
      }) satisfies Intake;
    } catch (err) {
      const e =
        err instanceof FleetError ? err : new FleetError("E_INVALID_DESIRED", `${source}: ${(err as Error).message}`);
      this.reject(e);
      return undefined;
    }
  }

  /**
   * Records a document's generation for its topic and, when it is to be
   * applied, the document itself: persisted before anything changes, so a
   * crash mid-apply resumes it. From here the reported generation is the new
   * one, so the phase changes with it, before the write lets a report go out.
   */
  private async accept(acceptance: Acceptance): Promise<void> {
    if (acceptance.desired) {
      this.phase = "pulling";
      this.lastError = null;
    }
    const at = new Date();
    await this.db.update((d) => recordAcceptance(d, acceptance, at));
  }

  /** An operator's rollback of `doc.deployment`: restores the deployment that was good before it. */
  private async rollBackOnRequest(acceptance: Acceptance): Promise<SubmitResult> {
    const { doc } = acceptance;
    const { desired, lastGood, previousGood } = this.db.data;
    if (desired?.deployment !== doc.deployment) {
      await this.accept(acceptance);
      const reason = `rollback of ${doc.deployment}, which this device does not run`;
      this.event({ type: "ignored", deployment: doc.deployment, generation: doc.generation, reason });
      return "ignored";
    }
    const target = lastGood && lastGood.deployment !== doc.deployment ? lastGood : previousGood;
    if (!target || target.deployment === doc.deployment) {
      await this.accept(acceptance);
      const message = `rollback of ${doc.deployment} requested, but this device has no earlier good deployment to restore; it keeps running ${doc.deployment}`;
      this.reject(new FleetError("E_NO_ROLLBACK_TARGET", message));
      return "rejected";
    }
    // It takes the rollback's generation (a replay of the rolled-back one is ignored), and must pass today's policy.
    const restored = { ...enforcePolicy(target, this.deps.policy, "db.json"), generation: doc.generation };
    await this.accept({ ...acceptance, desired: restored });
    const reason = "requested by the operator";
    this.event({ type: "rollingBack", deployment: doc.deployment, to: target.deployment, reason });
    const message = `the operator rolled ${doc.deployment} back; restored ${target.deployment}`;
    void this.applyInBackground(restored, { code: "E_ROLLED_BACK", message });
    return "applying";
  }

  reject(err: FleetError): void {
    this.phase = "rejected";
    this.lastError = err.toJSON();
    this.event({ type: "rejected", code: err.code, message: err.message });
    this.changed();
  }

  /** Starts applying `doc`, cancelling an apply in progress; resolves when this apply settles. */
  applyInBackground(doc: DesiredState, rolledBack?: Outcome): Promise<void> {
    const previous = this.current;
    // A rollback says so: the deployment it cuts short must not count as good.
    const superseded = `superseded by generation ${doc.generation}${rolledBack ? " (a rollback)" : ""}`;
    previous?.abort.abort(new FleetError(rolledBack ? "E_ROLLED_BACK" : "E_ABORTED", superseded));
    const abort = new AbortController();
    const done = (async () => {
      await previous?.done;
      await runDeployment(doc, abort.signal, this.host, rolledBack);
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

  /** POST /v1/services/<name>/restart. */
  restartService(service: string): Promise<void> {
    return this.services.restartService(service);
  }

  logs(service: string, tail?: number): string {
    return this.services.logs(service, tail);
  }

  reported(): ReportedState {
    const desired = this.db.data.desired;
    return {
      deviceId: this.deps.deviceId,
      deployment: desired?.deployment ?? null,
      generation: desired?.generation ?? null,
      phase: this.phase,
      lastGood: this.db.data.lastGood?.deployment ?? null,
      source: this.db.data.desiredSource,
      groups: this.deps.groups ?? [],
      services: this.services.reports(),
      lastError: this.lastError && {
        code: this.lastError.code,
        message: clip(this.lastError.message, LAST_ERROR_MAX_CHARS),
      },
      lastAccepted: this.db.data.lastAccepted ?? null,
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
    this.current?.abort.abort(STOPPING);
    await this.current?.done;
    this.services.detachAll();
  }
}
