/**
 * The executor: one handler per step kind, so the compiler checks that every
 * kind the planner can emit has one. Handlers act through the context only.
 */
import { runBounded } from "../bounded.js";
import type { ImageRecord } from "../store/image-store.js";
import type { ServiceStart } from "./device-services.js";
import type { HealthGate } from "./health-gate.js";
import type { Step } from "./plan.js";

export interface StepContext {
  signal: AbortSignal;
  deployment: string;
  gate: HealthGate;
  /** Fetches an image (or resolves its tag again) and makes it ready for this apply. */
  pull(ref: string): Promise<void>;
  /** An image made ready for this apply; throws when the store no longer has it whole. */
  readyImage(ref: string): ImageRecord;
  startService(start: Omit<ServiceStart, "failures">): Promise<void>;
  stopContainer(service: string, containerId: string, timeoutMs: number, signal: string): Promise<void>;
  removeContainer(service: string, containerId: string): Promise<void>;
  event(e: { type: string; [k: string]: unknown }): void;
}

type Handlers = { [K in Step["kind"]]: (step: Extract<Step, { kind: K }>, ctx: StepContext) => Promise<void> };

export const STEP_HANDLERS: Handlers = {
  pull: async (step, ctx) => {
    ctx.event({ type: "pulling", image: step.image });
    await ctx.pull(step.image);
  },
  start: async (step, ctx) => {
    const image = ctx.readyImage(step.spec.image);
    await ctx.startService({ ...step, image, deployment: ctx.deployment });
    ctx.event({ type: "started", service: step.service, container: step.containerId });
  },
  stop: (step, ctx) => ctx.stopContainer(step.service, step.containerId, step.timeoutMs, step.signal),
  remove: (step, ctx) => ctx.removeContainer(step.service, step.containerId),
  "await-healthy": (step, ctx) => ctx.gate.healthy(step.services, step.withinMs, ctx.signal),
};

export async function runStep(step: Step, ctx: StepContext): Promise<void> {
  const handler = STEP_HANDLERS[step.kind] as (s: Step, c: StepContext) => Promise<void>;
  await handler(step, ctx);
}

/** How many steps of one batch run at once. Pulls go one at a time: they share the bandwidth cap. */
export const BATCH_CONCURRENCY = 8;

/**
 * Consecutive steps of one kind for different services form a batch: they
 * do not depend on each other, so they run side by side. A service appearing
 * twice (stop then start of the same name) starts a new batch.
 */
export function batches(steps: Step[]): Step[][] {
  const out: Step[][] = [];
  for (const step of steps) {
    const last = out.at(-1);
    const service = "service" in step ? step.service : undefined;
    const joins =
      last &&
      last[0]!.kind === step.kind &&
      step.kind !== "await-healthy" &&
      !last.some((s) => "service" in s && s.service === service);
    if (joins) last.push(step);
    else out.push([step]);
  }
  return out;
}

/** Runs a batch, at most BATCH_CONCURRENCY at a time (pulls one by one). */
export function runBatch(batch: Step[], ctx: StepContext): Promise<void> {
  const limit = batch[0]?.kind === "pull" ? 1 : BATCH_CONCURRENCY;
  return runBounded(batch, limit, (step) => runStep(step, ctx));
}
