/**
 * One deployment's run, from the first pass to the end of its probation:
 * converge, report converged, keep the new services on probation, and mark
 * the deployment good. If it fails (a pull, a start, the health gate) and
 * its update policy allows, the last good deployment is restored and the
 * device reports rolledBack with the reason.
 */
import type { DesiredState } from "../../schemas/desired.js";
import type { AgentMetrics, ReportedState } from "../../schemas/reported.js";
import { monotonicMs } from "../clock.js";
import { FleetError } from "../errors.js";
import type { AgentStore, PullImage } from "./agent-store.js";
import { converge } from "./converge.js";
import type { DeviceServices } from "./device-services.js";
import { type DevicePolicy, enforcePolicy } from "./policy.js";

export type Phase = ReportedState["phase"];
export type AgentEvent = { type: string; [k: string]: unknown };
export type Outcome = { code: FleetError["code"]; message: string };

/** Why a run is cut short when the agent stops: not a newer document, so not a verdict on the deployment. */
export const STOPPING = new FleetError("E_ABORTED", "the agent is stopping");

/** The part of the agent a run reports through. */
export interface RunHost {
  store: AgentStore;
  policy: DevicePolicy;
  services: DeviceServices;
  pull: PullImage;
  metrics: AgentMetrics;
  setPhase(phase: Phase, lastError?: { code: string; message: string } | null): void;
  event(e: AgentEvent): void;
  changed(): void;
}

/** Applies `doc`; resolves with the gate that judged it and the end of its lease (see converge.ts). */
function applyDoc(doc: DesiredState, signal: AbortSignal, host: RunHost) {
  return converge(doc, signal, {
    store: host.store,
    services: host.services,
    ...(host.services.networks ? { networks: host.services.networks } : {}),
    pull: host.pull,
    event: (e) => host.event(e),
    phase: (p) => host.setPhase(p),
    changed: () => host.changed(),
  });
}

async function markGood(doc: DesiredState, store: AgentStore): Promise<void> {
  await store.db.update((d) => {
    if (d.lastGood && d.lastGood.deployment !== doc.deployment) d.previousGood = d.lastGood;
    d.lastGood = doc;
  });
}

/** The deployment failed: back to the last good one if the policy allows, else reported failed. */
async function recover(doc: DesiredState, err: unknown, signal: AbortSignal, host: RunHost): Promise<void> {
  const e = err instanceof FleetError ? err : new FleetError("E_RUNTIME", (err as Error).message);
  const good = host.store.db.data.lastGood;
  if (!doc.update.rollback || !good || good.deployment === doc.deployment) {
    host.setPhase("failed", e.toJSON());
    host.event({ type: "failed", deployment: doc.deployment, code: e.code, message: e.message });
    return;
  }
  host.event({ type: "rollingBack", deployment: doc.deployment, to: good.deployment, code: e.code, reason: e.message });
  try {
    // The policy may have tightened since it was good: what it no longer allows is not restored.
    const { release } = await applyDoc(enforcePolicy(good, host.policy, "db.json lastGood"), signal, host);
    host.metrics.rollbacksTotal++;
    host.setPhase("rolledBack", { code: e.code, message: `${e.message}; rolled back to ${good.deployment}` });
    host.event({ type: "rolledBack", deployment: doc.deployment, to: good.deployment, reason: e.message });
    host.changed();
    await release(); // once the outcome is out, as in runDeployment
  } catch (again) {
    const message = `${e.message}; the rollback to ${good.deployment} failed too: ${(again as Error).message}`;
    host.setPhase("failed", { code: e.code, message });
    host.event({ type: "failed", deployment: doc.deployment, code: e.code, message });
  }
}

/**
 * Runs `doc` to its outcome. `rolledBack` makes a success report phase
 * rolledBack with that reason (an operator's rollback). A newer document
 * aborts `signal`: the run then ends quietly and the newer one owns the phase.
 */
export async function runDeployment(doc: DesiredState, signal: AbortSignal, host: RunHost, rolledBack?: Outcome) {
  const t0 = monotonicMs();
  host.metrics.appliesTotal++;
  try {
    const { gate, release } = await applyDoc(doc, signal, host);
    try {
      if (signal.aborted) return;
      host.setPhase(rolledBack ? "rolledBack" : "converged", rolledBack ?? null);
      host.event(
        rolledBack
          ? { type: "rolledBack", to: doc.deployment, reason: rolledBack.message }
          : { type: "converged", deployment: doc.deployment, generation: doc.generation },
      );
      if (rolledBack) host.metrics.rollbacksTotal++;
      host.changed();
    } finally {
      await release(); // once the outcome is out: the lease's write need not hold it up
    }
    // Converged is reported at once; the gate keeps the new services on
    // probation for the rest of the health window, and a crash in it still rolls back.
    // A run that started nothing (its containers already ran: the agent restarted within
    // the window, say) still owes a deployment that is not yet good a window, over all its services.
    if (gate.started.size === 0 && host.store.db.data.lastGood?.deployment !== doc.deployment)
      gate.watch(Object.keys(doc.services));
    const healthy = await gate.probation(doc.update.healthyWithinMs, signal);
    // Cut short by a newer document while healthy, it counts as good; never when
    // unhealthy at that moment, nor when an operator's rollback cut it short, nor when
    // the agent stopped (the next agent adopts it and watches it for a window of its own).
    const reason = signal.aborted ? (signal.reason as FleetError | undefined) : undefined;
    const noVerdict = reason === STOPPING || reason?.code === "E_ROLLED_BACK";
    if (healthy && !noVerdict) await markGood(doc, host.store);
  } catch (err) {
    if (signal.aborted) return; // a newer document took over
    await recover(doc, err, signal, host);
  } finally {
    host.metrics.applyDurationsMs.push(monotonicMs() - t0);
    if (host.metrics.applyDurationsMs.length > 100) host.metrics.applyDurationsMs.shift();
    host.changed();
  }
}
