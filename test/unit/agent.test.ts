/**
 * The Agent's decisions, fast: over the simulated runtime and store (no
 * kernel, no broker), so generations, rollbacks, probation, cancellation
 * and crash recovery are checked in milliseconds. The same paths run on the
 * real kernel in test/integration/agent.test.ts and apply.test.ts.
 */
import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { publicKeyFromBase64, publicKeyToBase64, signDocument } from "../../agent/protocol/signature.js";
import { Agent, type AgentEvent } from "../../agent/reconcile/agent.js";
import type { PullImage } from "../../agent/reconcile/agent-store.js";
import { resolvePolicy } from "../../agent/reconcile/policy.js";
import { deviceConfig } from "../../schemas/config.js";
import type { DesiredStateInput } from "../../schemas/desired.js";
import { SimulatedRuntime } from "../support/sim/simulated-runtime.js";
import { SimulatedStore } from "../support/sim/simulated-store.js";
import { trackedDesiredHandler } from "../support/tracked-handler.js";
import { waitFor } from "../support/wait-for.js";

const IMAGE = "reg.local:5000/acme/web:1";
/** The default policy of a device whose config names IMAGE's registry. */
const POLICY = resolvePolicy(deviceConfig.parse({ registries: { "reg.local:5000": {} } }));

function device(
  opts: { runtime?: SimulatedRuntime; store?: SimulatedStore; pull?: PullImage; policy?: typeof POLICY } = {},
) {
  const runtime = opts.runtime ?? new SimulatedRuntime();
  const store = opts.store ?? new SimulatedStore();
  const events: AgentEvent[] = [];
  const agent = new Agent({
    deviceId: "dev-1",
    groups: ["pilot"],
    runtime,
    store,
    version: "test",
    policy: opts.policy ?? POLICY,
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

describe("an apply's lease", () => {
  it("is held until the outcome is reported, then released, whether the deployment converged or rolled back", async () => {
    const { agent, store, events } = device();
    const purposes = () => Object.values(store.db.data.leases).map((l) => l.purpose);
    // What the store's leases were as each outcome went out: the lease's write does not hold the report up.
    const atOutcome: Record<string, string[]> = {};
    const push = events.push.bind(events);
    events.push = (...added) => {
      for (const e of added) if (e.type === "converged" || e.type === "rolledBack") atOutcome[e.type] = purposes();
      return push(...added);
    };
    await applied(agent, doc("good", 1));
    expect(atOutcome.converged).toEqual(["apply good"]);
    expect(purposes()).toEqual([]);
    const crashes = doc("crashes", 2, {
      services: { web: { image: IMAGE, command: ["exit", "1", "0"] } },
      update: { healthyWithinMs: 2000 },
    });
    await applied(agent, crashes);
    expect(agent.reported()).toMatchObject({ phase: "rolledBack", lastGood: "good" });
    expect(atOutcome.rolledBack).toEqual(["apply good"]);
    expect(purposes()).toEqual([]);
  });
});

describe("the agent's health gate", () => {
  it("marks a deployment good once its probation passes, and rolls a later one back when it crashes on probation", async () => {
    const { agent, runtime, events } = device();
    await applied(agent, doc("good", 1));
    expect(agent.reported()).toMatchObject({ phase: "converged", lastGood: "good" });
    const crashes = doc("crashes", 2, {
      services: { web: { image: IMAGE, env: { DEPLOYMENT: "crashes" }, command: ["exit", "1", "600"] } },
      update: { healthyWithinMs: 2000 },
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

  it("keeps a deployment on probation across an agent restart within its window: a crash after the restart still rolls it back", async () => {
    const runtime = new SimulatedRuntime();
    const store = new SimulatedStore();
    const first = device({ runtime, store });
    await applied(first.agent, doc("good", 1));
    const crashes = doc("crashes", 2, {
      services: { web: { image: IMAGE, env: { DEPLOYMENT: "crashes" }, command: ["exit", "1", "600"] } },
      update: { healthyWithinMs: 5000 },
    });
    await first.agent.submit(crashes);
    await waitFor("crashes converged", () =>
      first.events.some((e) => e.type === "converged" && e.deployment === "crashes"),
    );
    // The agent stops within the window, before the crash; its container runs on and is adopted by the next one.
    await first.agent.stop();
    const second = device({ runtime, store });
    await second.agent.reattach();
    await second.agent.idle();
    expect(second.agent.reported()).toMatchObject({ phase: "rolledBack", lastGood: "good" });
    expect(second.agent.lastError?.code).toBe("E_UNHEALTHY");
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
    await agent.submit(
      doc("slow", 1, { services: { web: { image: "reg.local:5000/acme/web:slow", env: { DEPLOYMENT: "slow" } } } }),
    );
    await waitFor("the slow pull", () => events.some((e) => e.type === "pulling"));
    await agent.submit(doc("fast", 2));
    release();
    await agent.idle();
    expect(agent.reported()).toMatchObject({ deployment: "fast", phase: "converged", lastGood: "fast" });
    expect(running(runtime)).toEqual({ web: ["fast"] });
    expect(events.some((e) => e.type === "converged" && e.deployment === "slow")).toBe(false);
  });
});

describe("the device's policy", () => {
  it("refuses a document that asks for more than the policy allows, and the services run on untouched", async () => {
    const { agent, runtime, events } = device();
    await applied(agent, doc("good", 1));
    const host = doc("host", 2, { services: { web: { image: IMAGE, network: "host" } } });
    expect(await applied(agent, host)).toBe("rejected");
    expect(agent.lastError).toMatchObject({
      code: "E_POLICY",
      message: expect.stringContaining("services.web.network"),
    });
    expect(events.at(-1)).toMatchObject({ type: "rejected", code: "E_POLICY" });
    expect(agent.reported()).toMatchObject({ deployment: "good", generation: 1 });
    expect(running(runtime)).toEqual({ web: ["good"] });
    // A refused document counts no generation: the corrected one with the same generation is taken.
    expect(await applied(agent, doc("fixed", 2))).toBe("applying");
  });

  it("holds the accepted document to the policy again after a restart, and keeps the adopted services running when it no longer passes", async () => {
    const first = device();
    await applied(first.agent, doc("big", 1, { services: { web: { image: IMAGE, resources: { memory: "512Mi" } } } }));
    await first.agent.stop();
    const stricter = { ...POLICY, max: { ...POLICY.max, memory: 256 * 1024 * 1024 } };
    const second = device({ runtime: first.runtime, store: first.store, policy: stricter });
    await second.agent.reattach();
    await second.agent.idle();
    expect(second.agent.reported()).toMatchObject({ phase: "rejected", deployment: "big" });
    expect(second.agent.lastError?.message).toContain("db.json desired: services.web.resources.memory");
    expect(first.runtime.list().filter((c) => c.status === "running")).toHaveLength(1);
  });
});

describe("the device's policy and what it restores", () => {
  it("does not roll back to a good deployment that today's policy refuses", async () => {
    const first = device();
    await applied(first.agent, doc("big", 1, { services: { web: { image: IMAGE, resources: { memory: "512Mi" } } } }));
    expect(first.agent.reported()).toMatchObject({ phase: "converged", lastGood: "big" });
    await first.agent.stop();
    const stricter = { ...POLICY, max: { ...POLICY.max, memory: 256 * 1024 * 1024 } };
    const second = device({ runtime: first.runtime, store: first.store, policy: stricter });
    const broken = doc("broken", 2, {
      services: { web: { image: IMAGE, command: ["exit", "3", "0"] } },
      update: { healthyWithinMs: 200 },
    });
    await applied(second.agent, broken);
    expect(second.agent.reported().phase).toBe("failed");
    expect(second.agent.lastError?.message).toContain("db.json lastGood: services.web.resources.memory");
    expect(second.events.some((e) => e.type === "rolledBack")).toBe(false);
  });

  it("gives a service without limits the policy's defaults in its container, and replaces nothing when the defaults change", async () => {
    const first = device();
    await applied(first.agent, doc("plain", 1));
    const [before] = first.runtime.list();
    expect(before!.spec.resources).toMatchObject({ memory: POLICY.defaults.memory, pids: POLICY.defaults.pids });
    await first.agent.stop();
    const tighter = { ...POLICY, defaults: { memory: 128 * 1024 * 1024, pids: 64 } };
    const second = device({ runtime: first.runtime, store: first.store, policy: tighter });
    await second.agent.reattach();
    await second.agent.idle();
    expect(second.agent.reported()).toMatchObject({ phase: "converged", deployment: "plain" });
    const after = first.runtime.list();
    expect(after.map((c) => [c.id, c.pid])).toEqual([[before!.id, before!.pid]]);
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

describe("the documents a device follows", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const signed = (d: DesiredStateInput, target: string) => signDocument({ ...d, target }, privateKey);

  /** A device wired as the daemon wires it: messages go through desiredHandler; `settle` waits for what they started. */
  function wired(opts: { signing: boolean }) {
    const runtime = new SimulatedRuntime();
    const store = new SimulatedStore();
    const events: AgentEvent[] = [];
    const trustedKeys = opts.signing ? [publicKeyFromBase64(publicKeyToBase64(publicKey))] : [];
    const agent = new Agent({
      deviceId: "dev-1",
      groups: ["pilot"],
      runtime,
      store,
      version: "test",
      trustedKeys,
      policy: { ...POLICY, requireSigned: opts.signing },
      pull: (ref, { signal }) => store.pull(ref, signal),
      onEvent: (e) => events.push(e),
    });
    const { handler, pending } = trackedDesiredHandler(agent, ["pilot"]);
    const send = async (kind: "device" | "group", payload: object | "") => {
      handler(
        { kind, name: kind === "device" ? "dev-1" : "pilot" },
        Buffer.from(payload ? JSON.stringify(payload) : ""),
      );
      await Promise.all(pending);
      await agent.idle();
    };
    return { agent, runtime, events, send };
  }

  it("keeps taking its groups' deployments after a forged document on its own topic", async () => {
    const { agent, runtime, send } = wired({ signing: true });
    await send("group", signed(doc("g1", 1, { update: { healthyWithinMs: 0 } }), "group/pilot"));
    expect(running(runtime)).toEqual({ web: ["g1"] });
    await send("device", { ...doc("forged", 99), target: "device/dev-1" });
    expect(agent.reported()).toMatchObject({ phase: "rejected", deployment: "g1", source: "group:pilot" });
    expect(agent.lastError?.code).toBe("E_BAD_SIGNATURE");
    expect(running(runtime)).toEqual({ web: ["g1"] });
    await send("group", signed(doc("g2", 2, { update: { healthyWithinMs: 0 } }), "group/pilot"));
    expect(agent.reported()).toMatchObject({ phase: "converged", deployment: "g2", generation: 2 });
    expect(running(runtime)).toEqual({ web: ["g2"] });
  });

  it("does not let an empty message clear a topic on a device that requires signatures", async () => {
    const { agent, runtime, send } = wired({ signing: true });
    await send("device", signed(doc("own", 1, { update: { healthyWithinMs: 0 } }), "device/dev-1"));
    await send("device", "");
    expect(agent.lastError).toMatchObject({ code: "E_BAD_SIGNATURE", message: expect.stringContaining("empty") });
    await send("group", signed(doc("g1", 1, { update: { healthyWithinMs: 0 } }), "group/pilot"));
    expect(agent.reported()).toMatchObject({ deployment: "own", source: "device" });
    expect(running(runtime)).toEqual({ web: ["own"] });
  });

  it("follows its groups again once its own topic is cleared, and a replayed older document of its own does not take it back", async () => {
    const { agent, runtime, events, send } = wired({ signing: false });
    await send("device", doc("own", 3, { update: { healthyWithinMs: 0 } }));
    await send("device", "");
    await send("group", doc("g1", 1, { update: { healthyWithinMs: 0 } }));
    expect(running(runtime)).toEqual({ web: ["g1"] });
    await send("device", doc("own-old", 2));
    expect(events.at(-1)).toMatchObject({ type: "ignored", reason: expect.stringContaining("a replay") });
    await send("group", doc("g2", 2, { update: { healthyWithinMs: 0 } }));
    expect(agent.reported()).toMatchObject({ deployment: "g2", source: "group:pilot", phase: "converged" });
    expect(running(runtime)).toEqual({ web: ["g2"] });
  });

  it("keeps following a document it accepted once its notAfter has passed, when the topic delivers it again", async () => {
    const { agent, runtime, send } = wired({ signing: true });
    const own = signed(
      { ...doc("own", 1, { update: { healthyWithinMs: 0 } }), notAfter: new Date(Date.now() + 1500).toISOString() },
      "device/dev-1",
    );
    await send("device", own);
    expect(agent.reported()).toMatchObject({ deployment: "own", phase: "converged" });
    await new Promise((r) => setTimeout(r, 1600));
    await send("device", own); // the retained document, at a reconnect
    await send("group", signed(doc("g1", 1, { update: { healthyWithinMs: 0 } }), "group/pilot"));
    expect(agent.reported()).toMatchObject({ deployment: "own", source: "device", phase: "converged" });
    expect(agent.lastError).toBeNull();
    expect(running(runtime)).toEqual({ web: ["own"] });
  });

  it("reports what it accepted and what it could tell of its age: a reset device had no earlier generation", async () => {
    const { agent, send } = wired({ signing: true });
    const notAfter = new Date(Date.now() + 3_600_000).toISOString();
    await send("group", signed({ ...doc("g1", 7, { update: { healthyWithinMs: 0 } }), notAfter }, "group/pilot"));
    expect(agent.reported().lastAccepted).toMatchObject({
      deployment: "g1",
      generation: 7,
      source: "group:pilot",
      signed: true,
      notAfter,
      previousGeneration: null,
    });
    await send("group", signed(doc("g2", 8, { update: { healthyWithinMs: 0 } }), "group/pilot"));
    expect(agent.reported().lastAccepted).toMatchObject({ generation: 8, notAfter: null, previousGeneration: 7 });
  });
});
