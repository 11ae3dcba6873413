/**
 * The executor: one handler per step kind, so the compiler checks that every
 * kind the planner can emit has one. Handlers act through the context only.
 */
import type { ServiceSpec } from "../../schemas/desired.js";
import { runBounded } from "../bounded.js";
import { FleetError } from "../errors.js";
import type { ImageRecord } from "../store/image-store.js";
import type { Step } from "./plan.js";

export interface StepContext {
  signal: AbortSignal;
  deployment: string;
  /** Image records by reference, filled by pulls. */
  images: Map<string, ImageRecord>;
  pull(ref: string, signal: AbortSignal): Promise<ImageRecord>;
  startService(
    service: string,
    spec: ServiceSpec,
    hash: string,
    containerId: string,
    image: ImageRecord,
    deployment: string,
  ): Promise<void>;
  stopContainer(service: string, containerId: string, timeoutMs: number, signal: string): Promise<void>;
  removeContainer(service: string, containerId: string): Promise<void>;
  /** Why a service is not healthy yet, or undefined once it is. */
  unhealthyReason(service: string): string | undefined;
  event(e: { type: string; [k: string]: unknown }): void;
}

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

type Handlers = { [K in Step["kind"]]: (step: Extract<Step, { kind: K }>, ctx: StepContext) => Promise<void> };

async function awaitHealthy(step: Extract<Step, { kind: "await-healthy" }>, ctx: StepContext): Promise<void> {
  const deadline = Date.now() + step.withinMs;
  for (;;) {
    ctx.signal.throwIfAborted();
    const pending = step.services
      .map((s) => [s, ctx.unhealthyReason(s)] as const)
      .filter(([, why]) => why !== undefined);
    if (pending.length === 0) return;
    if (Date.now() >= deadline) {
      const detail = pending.map(([s, why]) => `${s} (${why})`).join(", ");
      throw new FleetError(
        "E_UNHEALTHY",
        `deployment ${ctx.deployment}: not healthy within ${step.withinMs} ms: ${detail}`,
      );
    }
    await pause(100, ctx.signal);
  }
}

export const STEP_HANDLERS: Handlers = {
  pull: async (step, ctx) => {
    if (ctx.images.has(step.image)) return;
    ctx.images.set(step.image, await ctx.pull(step.image, ctx.signal));
  },
  start: async (step, ctx) => {
    const image = ctx.images.get(step.spec.image) ?? (await ctx.pull(step.spec.image, ctx.signal));
    await ctx.startService(step.service, step.spec, step.hash, step.containerId, image, ctx.deployment);
    ctx.event({ type: "started", service: step.service, container: step.containerId });
  },
  stop: (step, ctx) => ctx.stopContainer(step.service, step.containerId, step.timeoutMs, step.signal),
  remove: (step, ctx) => ctx.removeContainer(step.service, step.containerId),
  "await-healthy": awaitHealthy,
};

export async function runStep(step: Step, ctx: StepContext): Promise<void> {
  const handler = STEP_HANDLERS[step.kind] as (s: Step, c: StepContext) => Promise<void>;
  await handler(step, ctx);
}

/** How many steps of one batch run at once. */
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

/** Runs a batch, at most BATCH_CONCURRENCY at a time. */
export function runBatch(batch: Step[], ctx: StepContext): Promise<void> {
  return runBounded(batch, BATCH_CONCURRENCY, (step) => runStep(step, ctx));
}
