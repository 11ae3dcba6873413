/**
 * One apply: plan, carry the steps out, and plan again from what is now
 * there, until the plan is empty. Each pass sees the store and the
 * containers afresh, so a container that died mid-apply, or an image pruned
 * by hand, is simply planned for again. Everything the apply uses is held by
 * one lease until it ends, so no collection takes it meanwhile.
 */
import type { NetworkRecord } from "../../schemas/db.js";
import type { DesiredState } from "../../schemas/desired.js";
import { serviceNetworks } from "../../schemas/network.js";
import { FleetError } from "../errors.js";
import type { ImageRecord } from "../store/image-store.js";
import type { Lease } from "../store/leases.js";
import { imageContent } from "../store/local-store.js";
import type { AgentStore, PullImage } from "./agent-store.js";
import { batches, runBatch, type StepContext } from "./apply-steps.js";
import type { DeviceNetworks } from "./device-networks.js";
import type { DeviceServices } from "./device-services.js";
import { HealthGate } from "./health-gate.js";
import { plan, type Step, type StoredImage } from "./plan.js";

/** More passes than any strategy needs (pull, swap, clean up): beyond that the device is fighting something. */
export const MAX_PASSES = 6;

export interface ConvergeDeps {
  store: AgentStore;
  services: DeviceServices;
  /** The device's container networks; absent where the runtime has none (the fleet simulation). */
  networks?: DeviceNetworks;
  pull: PullImage;
  event(e: { type: string; [k: string]: unknown }): void;
  /** A pass is about to run: "pulling" while images are missing, then "applying". */
  phase(phase: "pulling" | "applying"): void;
  changed(): void;
}

/** A reference pinned to this record's digest: the registry has nothing newer to say about it. */
function pinnedTo(ref: string, image: ImageRecord): boolean {
  const digest = ref.slice(ref.lastIndexOf("@") + 1);
  return ref.includes("@") && (digest === image.digest || digest === image.indexDigest);
}

const describe = (steps: Step[]) =>
  steps.map((s) => `${s.kind} ${"service" in s ? s.service : "image" in s ? s.image : s.services.join(",")}`);

/** What the store holds of the document's images; each is leased before it is looked at. */
async function storedImages(
  doc: DesiredState,
  ready: Map<string, ImageRecord>,
  lease: Lease,
  store: AgentStore,
): Promise<Map<string, StoredImage>> {
  await store.db.refresh();
  const out = new Map<string, StoredImage>();
  for (const ref of new Set(Object.values(doc.services).map((s) => s.image))) {
    const image = ready.get(ref) ?? store.images.get(ref);
    if (!image) continue;
    await lease.add(imageContent(image));
    if (!store.isWhole(image)) ready.delete(ref);
    else if (pinnedTo(ref, image)) ready.set(ref, image);
    out.set(ref, { digest: image.digest, ready: ready.has(ref) });
  }
  return out;
}

function stepContext(
  doc: DesiredState,
  signal: AbortSignal,
  run: { gate: HealthGate; lease: Lease; networks: Record<string, NetworkRecord> },
  deps: ConvergeDeps,
) {
  const { gate, lease } = run;
  const ready = new Map<string, ImageRecord>();
  const ctx: StepContext = {
    signal,
    deployment: doc.deployment,
    gate,
    pull: async (ref) => {
      ready.set(ref, await deps.pull(ref, { signal, lease }));
    },
    readyImage: (ref) => {
      const image = ready.get(ref);
      if (!image || !deps.store.isWhole(image)) {
        throw new FleetError("E_IMAGE_NOT_FOUND", `image ${ref} is no longer whole in the store`);
      }
      return image;
    },
    startService: (s) =>
      deps.services.startService({
        ...s,
        failures: 0,
        networks: serviceNetworks(s.spec).flatMap((n) => run.networks[n] ?? []),
      }),
    stopContainer: (service, id, timeoutMs, sig) => deps.services.stopContainer(service, id, timeoutMs, sig),
    removeContainer: (service, id) => deps.services.removeContainer(service, id),
    event: (e) => deps.event(e),
  };
  return { ctx, ready };
}

/**
 * A converged apply: the deployment's health gate (which knows the services
 * it started), and the end of the apply's lease, which the caller calls once
 * it has reported the outcome (its write need not hold the report up).
 */
export interface Converged {
  gate: HealthGate;
  release(): Promise<void>;
}

/** Converges on `doc`. A failed apply releases its lease before it throws. */
export async function converge(doc: DesiredState, signal: AbortSignal, deps: ConvergeDeps): Promise<Converged> {
  const lease = await deps.store.leases.take(`apply ${doc.deployment}`);
  try {
    return { gate: await passes(doc, signal, deps, lease), release: () => lease.release() };
  } catch (err) {
    await lease.release();
    throw err;
  }
}

/** Plans and carries out the steps, pass after pass, until nothing is left to do. */
async function passes(doc: DesiredState, signal: AbortSignal, deps: ConvergeDeps, lease: Lease): Promise<HealthGate> {
  const gate = new HealthGate(doc.deployment, (s) => deps.services.unhealthyReason(s));
  // Placed and checked before the first step: a conflict refuses the document with nothing stopped.
  const networks = deps.networks ? await deps.networks.prepare(doc) : {};
  const { ctx, ready } = stepContext(doc, signal, { gate, lease, networks }, deps);
  for (let pass = 1; ; pass++) {
    signal.throwIfAborted();
    const steps = plan(doc, deps.services.actualServices(), await storedImages(doc, ready, lease, deps.store));
    if (steps.length === 0) {
      await deps.networks?.prune();
      return gate;
    }
    if (pass > MAX_PASSES) {
      const left = describe(steps).join(", ");
      throw new FleetError(
        "E_RUNTIME",
        `deployment ${doc.deployment} did not converge in ${MAX_PASSES} passes: ${left}`,
      );
    }
    deps.phase(steps.some((s) => s.kind === "pull") ? "pulling" : "applying");
    deps.changed();
    for (const batch of batches(steps)) {
      signal.throwIfAborted();
      await runBatch(batch, ctx);
      deps.changed();
    }
  }
}
