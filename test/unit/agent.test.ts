/**
 * The Agent's decisions, fast: over the simulated runtime and store (no
 * kernel, no broker), so generations, rollbacks, probation, cancellation
 * and crash recovery are checked in milliseconds. The same paths run on the
 * real kernel in test/integration/agent.test.ts and apply.test.ts.
 */
import { describe, expect, it } from "vitest";
import { Agent, type AgentEvent } from "../../agent/reconcile/agent.js";
import type { PullImage } from "../../agent/reconcile/agent-store.js";
import type { DesiredStateInput } from "../../schemas/desired.js";
import { SimulatedRuntime } from "../support/sim/simulated-runtime.js";
import { SimulatedStore } from "../support/sim/simulated-store.js";
import { waitFor } from "../support/wait-for.js";

const IMAGE = "reg.local:5000/acme/web:1";

function device(opts: { runtime?: SimulatedRuntime; store?: SimulatedStore; pull?: PullImage } = {}) {
  const runtime = opts.runtime ?? new SimulatedRuntime();
  const store = opts.store ?? new SimulatedStore();
  const events: AgentEvent[] = [];
  const agent = new Agent({
    deviceId: "dev-1",
    groups: ["pilot"],
    runtime,
    store,
    version: "test",
    pull: opts.pull ?? ((ref, { signal }) => store.pull(ref, signal)),
    onEvent: (e) => events.push(e),
  });
  return { agent, runtime, store, events };
}

function doc(deployment: string, generation: number, extra: Partial<DesiredStateInput> = {}): DesiredStateInput {
  return {
    apiVersion: "fleetlet/v1",
    deployment,
    generation,
    services: { web: { image: IMAGE, env: { DEPLOYMENT: deployment } } },
    update: { healthyWithinMs: 300 },
    ...extra,
  };
}

/** The containers that run, by service label. */
function running(runtime: SimulatedRuntime): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const c of runtime.list()) {
    if (c.status !== "running") continue;
    const service = c.spec.labels["fleetlet.service"] ?? "?";
    out[service] = [...(out[service] ?? []), c.spec.env.find((e) => e.startsWith("DEPLOYMENT="))?.slice(11) ?? ""];
  }
  return out;
}

async function applied(agent: Agent, payload: DesiredStateInput, group?: string) {
  const result = await agent.submit(payload, "test", group === undefined ? {} : { group });
  await agent.idle();
  return result;
}

describe("the agent's generations", () => {
  it("counts each topic's generations apart: a group document is not measured against the device's", async () => {
    const { agent } = device();
    expect(await applied(agent, doc("dev-a", 5))).toBe("applying");
    expect(await applied(agent, doc("dev-b", 5))).toBe("ignored");
    expect(await applied(agent, doc("grp-a", 1), "pilot")).toBe("applying");
    expect(agent.reported()).toMatchObject({ deployment: "grp-a", generation: 1, source: "group:pilot" });
    expect(await applied(agent, doc("grp-b", 1), "pilot")).toBe("ignored");
    expect(await applied(agent, doc("dev-c", 6))).toBe("applying");
    expect(agent.reported()).toMatchObject({ deployment: "dev-c", source: "device", phase: "converged" });
  });

  it("keeps the generations it accepted in db.json, so a new agent on the same state ignores a replay", async () => {
    const first = device();
    await applied(first.agent, doc("a", 3));
    await first.agent.stop();
    const second = device({ runtime: first.runtime, store: first.store });
    await second.agent.reattach();
    await second.agent.idle();
    expect(await applied(second.agent, doc("replayed", 3))).toBe("ignored");
    expect(second.agent.reported()).toMatchObject({ deployment: "a", generation: 3, phase: "converged" });
  });
});

describe("the agent's health gate", () => {
  it("marks a deployment good once its probation passes, and rolls a later one back when it crashes on probation", async () => {
    const { agent, runtime, events } = device();
    await applied(agent, doc("good", 1));
    expect(agent.reported()).toMatchObject({ phase: "converged", lastGood: "good" });
    const crashes = doc("crashes", 2, {
      services: { web: { image: IMAGE, env: { DEPLOYMENT: "crashes" }, command: ["exit", "1", "100"] } },
      update: { healthyWithinMs: 1000 },
    });
    await applied(agent, crashes);
    // It converged first (it ran), then its crash within the window rolled it back.
    const converged = events.findIndex((e) => e.type === "converged" && e.deployment === "crashes");
    expect(converged).toBeGreaterThan(0);
    expect(events.findIndex((e) => e.type === "rolledBack")).toBeGreaterThan(converged);
    expect(agent.reported()).toMatchObject({ phase: "rolledBack", lastGood: "good" });
    expect(agent.lastError?.code).toBe("E_UNHEALTHY");
    expect(running(runtime)).toEqual({ web: ["good"] });
  });

  it("reports failed, not rolledBack, when there is nothing good to go back to", async () => {
    const { agent } = device();
    const broken = doc("broken", 1, {
      services: { web: { image: IMAGE, command: ["exit", "3", "0"] } },
      update: { healthyWithinMs: 200 },
    });
    await applied(agent, broken);
    expect(agent.reported()).toMatchObject({ phase: "failed", lastGood: null });
    expect(agent.lastError?.code).toBe("E_UNHEALTHY");
  });
});

describe("an operator's rollback", () => {
  it("restores the deployment that was good before the one rolled back, under the rollback's generation", async () => {
    const { agent, runtime } = device();
    await applied(agent, doc("v1", 1), "pilot");
    await applied(agent, doc("v2", 2), "pilot");
    expect(agent.reported()).toMatchObject({ deployment: "v2", lastGood: "v2" });
    expect(await applied(agent, doc("v2", 3, { rollout: { rollback: true } }), "pilot")).toBe("applying");
    expect(agent.reported()).toMatchObject({ deployment: "v1", generation: 3, phase: "rolledBack" });
    expect(agent.lastError?.code).toBe("E_ROLLED_BACK");
    expect(running(runtime)).toEqual({ web: ["v1"] });
    expect(await applied(agent, doc("v2", 2), "pilot")).toBe("ignored");
  });

  it("refuses a rollback when the device has no earlier good deployment, and keeps running what it runs", async () => {
    const { agent, runtime } = device();
    await applied(agent, doc("only", 1), "pilot");
    expect(await applied(agent, doc("only", 2, { rollout: { rollback: true } }), "pilot")).toBe("rejected");
    expect(agent.lastError?.code).toBe("E_NO_ROLLBACK_TARGET");
    expect(running(runtime)).toEqual({ web: ["only"] });
  });
});

describe("a newer document", () => {
  it("cancels an apply still pulling, and the device converges on the newer one alone", async () => {
    const store = new SimulatedStore();
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const pull: PullImage = async (ref, { signal }) => {
      if (ref.endsWith(":slow"))
        await Promise.race([held, new Promise((_, no) => signal.addEventListener("abort", no))]);
      return store.pull(ref, signal);
    };
    const { agent, runtime, events } = device({ store, pull });
    await agent.submit(doc("slow", 1, { services: { web: { image: `${IMAGE}:slow`, env: { DEPLOYMENT: "slow" } } } }));
    await waitFor("the slow pull", () => events.some((e) => e.type === "pulling"));
    await agent.submit(doc("fast", 2));
    release();
    await agent.idle();
    expect(agent.reported()).toMatchObject({ deployment: "fast", phase: "converged", lastGood: "fast" });
    expect(running(runtime)).toEqual({ web: ["fast"] });
    expect(events.some((e) => e.type === "converged" && e.deployment === "slow")).toBe(false);
  });
});

describe("a crash mid-swap", () => {
  it("leaves no orphan or duplicate: the next agent removes the half-made container and converges", async () => {
    const runtime = new SimulatedRuntime();
    const store = new SimulatedStore();
    const first = device({ runtime, store });
    await applied(first.agent, doc("v1", 1));
    // The agent "dies" right after creating v2's container, before recording or starting it.
    const create = runtime.create.bind(runtime);
    let crashed = false;
    runtime.create = (spec) => {
      const info = create(spec);
      if (spec.env?.includes("DEPLOYMENT=v2")) {
        crashed = true;
        throw new Error("simulated crash after create");
      }
      return info;
    };
    await first.agent.submit(doc("v2", 2, { update: { healthyWithinMs: 300, rollback: false } }));
    await first.agent.idle();
    await first.agent.stop();
    expect(crashed).toBe(true);
    runtime.create = create;
    const second = device({ runtime, store });
    await second.agent.reattach();
    await second.agent.idle();
    expect(second.events.some((e) => e.type === "orphanRemoved")).toBe(true);
    expect(second.agent.reported()).toMatchObject({ deployment: "v2", phase: "converged" });
    expect(running(runtime)).toEqual({ web: ["v2"] });
    expect(runtime.list().length).toBe(1);
  });

  it("starts again a service whose container vanished while no agent watched", async () => {
    const runtime = new SimulatedRuntime();
    const store = new SimulatedStore();
    const first = device({ runtime, store });
    await applied(first.agent, doc("v1", 1));
    await first.agent.stop();
    for (const c of runtime.list()) await runtime.delete(c.id, { force: true });
    const second = device({ runtime, store });
    await second.agent.reattach();
    await second.agent.idle();
    expect(running(runtime)).toEqual({ web: ["v1"] });
  });
});
