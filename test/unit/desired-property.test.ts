/**
 * Desired-state intake under generated input (fast-check): documents shaped
 * around the schema, with mutated fields, wrong types, huge strings, odd
 * unicode (lone surrogates included), policy violations and every kind of
 * signature. Each one is either accepted, and then holds to the device's
 * policy, or refused with a FleetError whose message names the field; and a
 * refused one, sent to a real Agent over the simulated runtime and store
 * through the same handler the daemon uses, leaves the running containers
 * exactly as the good deployment left them.
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FleetError } from "../../agent/errors.js";
import { publicKeyFromBase64, publicKeyToBase64, signDocument } from "../../agent/protocol/signature.js";
import { Agent } from "../../agent/reconcile/agent.js";
import { type Intake, readDesired } from "../../agent/reconcile/desired-intake.js";
import { type DevicePolicy, resolvePolicy, withDefaultLimits } from "../../agent/reconcile/policy.js";
import { parseReference } from "../../agent/registry/reference.js";
import { deviceConfig } from "../../schemas/config.js";
import type { DesiredState } from "../../schemas/desired.js";
import { SimulatedRuntime } from "../support/sim/simulated-runtime.js";
import { SimulatedStore } from "../support/sim/simulated-store.js";
import { trackedDesiredHandler } from "../support/tracked-handler.js";

const REG = "reg.local:5000";
const DEVICE = "dev-1";
const trusted = generateKeyPairSync("ed25519");
const stranger = generateKeyPairSync("ed25519");
const TRUSTED_KEYS = [publicKeyFromBase64(publicKeyToBase64(trusted.publicKey))];
const POLICIES: Record<string, DevicePolicy> = {
  /** A device that trusts a key: the defaults, signatures required. */
  signing: resolvePolicy(deviceConfig.parse({ registries: { [REG]: {} }, trustedKeys: ["k"] })),
  /** A device that trusts no key, with host networking and more memory allowed by name. */
  open: resolvePolicy(
    deviceConfig.parse({ registries: { [REG]: {} }, policy: { hostNetwork: true, max: { memory: "2Gi" } } }),
  ),
};
const REFUSALS = new Set(["E_INVALID_DESIRED", "E_BAD_SIGNATURE", "E_POLICY", "E_EXPIRED"]);
/**
 * A refusal's message: the source, then the field at fault and a colon (a
 * schema path from one of the document's fields, a canonical-JSON path, or
 * the document itself), or unreadable JSON.
 */
const TOP_FIELDS = "apiVersion|deployment|generation|services|update|rollout|target|notAfter|signature";
const fieldFirst = (source: string) =>
  new RegExp(String.raw`^${source}: (not valid JSON: |document: |(${TOP_FIELDS})(\.[^]*?)?: |\$[^]*?: )`);

// ---------------------------------------------------------------- arbitraries

const HUGE = "x".repeat(200_000);
const odd = fc.oneof(
  fc.string({ maxLength: 20 }),
  fc.string({ unit: "grapheme", maxLength: 10 }),
  fc.string({ unit: "binary", maxLength: 10 }),
  fc.constantFrom("\ud800", "a\udc00b", "\ude00\ud83d", "\u0000", "\u202eevil", "é", "😀", "../..", HUGE),
);
/** Mostly `good`, sometimes `bad`: each field goes wrong on its own, so whole documents are often right. */
const mostly = <T, U>(good: fc.Arbitrary<T>, bad: fc.Arbitrary<U>) =>
  fc.oneof({ weight: 19, arbitrary: good }, { weight: 1, arbitrary: bad });
const simple = fc.stringMatching(/^[a-z][a-z0-9-]{0,8}$/);
const image = mostly(
  fc.constantFrom(`${REG}/acme/web:1`, `${REG}/acme/web@sha256:${"a".repeat(64)}`, "REG.LOCAL:5000/acme/web:2"),
  fc.oneof(
    fc.constantFrom("evil.example:5000/x/y:1", "busybox", "", `${REG}/UPPER/x:1`, `${REG}/a/b@sha256:short`),
    odd,
  ),
);
const quantity = mostly(
  fc.constantFrom("64Mi", "256Mi", "1Gi", "1536Mi", "2Gi", "3G", 32 * 1024 ** 2),
  fc.oneof(fc.constantFrom("0", "1M", "lots", "-1", "1e9"), fc.integer({ min: -10, max: 2 ** 42 }), fc.double(), odd),
);
const service = fc.record(
  {
    image,
    command: mostly(fc.array(simple, { maxLength: 3 }), fc.array(odd, { maxLength: 3 })),
    env: mostly(fc.dictionary(fc.constantFrom("A", "PATH", "X_1"), odd, { maxKeys: 3 }), fc.dictionary(odd, odd)),
    resources: fc.record(
      {
        memory: quantity,
        pids: mostly(fc.integer({ min: 1, max: 6000 }), fc.constantFrom(0, -5, 1.5, "10", null)),
        cpus: mostly(fc.constantFrom(0.5, 2), fc.oneof(fc.double(), fc.constant(-1))),
      },
      { requiredKeys: [] },
    ),
    network: mostly(fc.constantFrom("none", "none", "host"), fc.constantFrom("bridge", 1)),
    restart: mostly(fc.constantFrom("always", "never", "on-failure"), fc.constant("sometimes")),
    volumes: mostly(
      fc.array(fc.record({ name: simple, target: fc.constant("/data") }), { maxLength: 2 }),
      fc.array(fc.record({ name: odd, target: fc.constantFrom("data", "/a/../b") }), { maxLength: 2 }),
    ),
    user: mostly(fc.constantFrom("1000", "0:0", "nobody"), odd),
    stopTimeoutMs: mostly(fc.integer({ min: 0, max: 60_000 }), fc.constantFrom(-1, "10")),
  },
  { requiredKeys: ["image"] },
);
const NOW = Date.now();
const document = fc.record(
  {
    apiVersion: mostly(fc.constant("fleetlet/v1"), fc.constantFrom("fleetlet/v2", 1)),
    deployment: mostly(simple, odd),
    generation: mostly(fc.integer({ min: 2, max: 1000 }), fc.constantFrom(-1, 1.5, "7", null, 2 ** 60)),
    services: mostly(
      fc.dictionary(fc.constantFrom("web", "db", "x-1", "a.b"), service, { minKeys: 1, maxKeys: 3 }),
      fc.oneof(fc.dictionary(odd, service, { maxKeys: 2 }), fc.constantFrom([], null, "web")),
    ),
    update: fc.record(
      {
        strategy: mostly(fc.constantFrom("download-then-swap", "start-then-stop"), fc.constant("yolo")),
        healthyWithinMs: mostly(fc.constant(0), fc.constantFrom(-1, "0")),
      },
      { requiredKeys: ["healthyWithinMs"] },
    ),
    target: mostly(fc.constant(`device/${DEVICE}`), fc.constantFrom("device/other", "group/pilot", "bogus")),
    notAfter: fc.oneof(
      { weight: 8, arbitrary: fc.constant(new Date(NOW + 86_400_000).toISOString()) },
      { weight: 1, arbitrary: fc.constant(new Date(NOW - 86_400_000).toISOString()) },
      { weight: 1, arbitrary: fc.constantFrom("2030-01-01", 123, "never") },
    ),
  },
  { requiredKeys: ["apiVersion", "deployment", "generation", "services", "update", "target"] },
);

/** A document with the value at one path (chosen by indices into each level's keys) replaced. */
function mutate(doc: Record<string, unknown>, steps: number[], value: unknown): Record<string, unknown> {
  const copy = structuredClone(doc);
  let node: Record<string, unknown> = copy;
  for (const [i, step] of steps.entries()) {
    const keys = Object.keys(node);
    if (!keys.length) break;
    const key = keys[step % keys.length]!;
    const next = node[key];
    if (i === steps.length - 1 || typeof next !== "object" || next === null) {
      node[key] = value;
      break;
    }
    node = next as Record<string, unknown>;
  }
  return copy;
}

type Signing = "none" | "trusted" | "stranger" | "tampered";
/** The document as published: unsigned, signed by the trusted key or a stranger's, or signed and then altered. */
function published(doc: Record<string, unknown>, signing: Signing): Record<string, unknown> {
  if (signing === "none") return doc;
  let signed: Record<string, unknown>;
  try {
    signed = signDocument(doc, signing === "stranger" ? stranger.privateKey : trusted.privateKey);
  } catch (err) {
    // Canonical JSON refuses lone surrogates: fleetctl would not sign it, so it goes out unsigned.
    expect(err).toBeInstanceOf(FleetError);
    return doc;
  }
  return signing === "tampered" ? { ...signed, deployment: `${String(doc.deployment)}-altered` } : signed;
}

const payload = fc
  .record({
    doc: fc.oneof(
      { weight: 8, arbitrary: document },
      {
        weight: 3,
        arbitrary: fc
          .tuple(document, fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), fc.jsonValue())
          .map(([d, steps, value]) => mutate(d, steps, value)),
      },
      { weight: 1, arbitrary: fc.jsonValue() },
    ),
    // A device that trusts a key mostly gets signed documents, one that trusts none mostly unsigned ones.
    signing: fc.oneof(
      { weight: 7, arbitrary: fc.constant<Signing>("trusted") },
      { weight: 1, arbitrary: fc.constantFrom<Signing>("none", "stranger", "tampered") },
    ),
    policy: fc.constantFrom(...Object.keys(POLICIES)),
    form: fc.oneof(
      { weight: 6, arbitrary: fc.constant("object") },
      { weight: 3, arbitrary: fc.constant("json") },
      { weight: 1, arbitrary: fc.constant("truncated") },
    ),
  })
  .map(({ doc, signing, policy, form }) => {
    const sign: Signing = policy === "open" ? (signing === "stranger" ? "trusted" : "none") : signing;
    const body =
      typeof doc === "object" && doc !== null && !Array.isArray(doc)
        ? published(doc as Record<string, unknown>, sign)
        : doc;
    const text = JSON.stringify(body) ?? "";
    const message: object | string =
      form === "object" && typeof body === "object" && body !== null
        ? body
        : form === "truncated"
          ? text.slice(0, Math.floor(text.length / 2))
          : text;
    return { message, policy: POLICIES[policy]!, policyName: policy, keys: policy === "signing" ? TRUSTED_KEYS : [] };
  });

// ---------------------------------------------------------------- checks

/** What an accepted document must hold to: the device's policy, and its signature rule. */
function checkAccepted(intake: Intake, policy: DevicePolicy): void {
  if (policy.requireSigned) expect(intake.signed).toBe(true);
  if (intake.kind !== "apply") return;
  checkServices(intake.doc, policy);
}

function checkServices(doc: DesiredState, policy: DevicePolicy): void {
  for (const spec of Object.values(doc.services)) {
    expect(policy.registries).toContain(parseReference(spec.image).registry.toLowerCase());
    if (!policy.hostNetwork) expect(spec.network).toBe("none");
    // What a container gets: the service's own limits, or the policy's defaults.
    const limits = withDefaultLimits(spec, policy.defaults).resources;
    expect(limits.memory).toBeLessThanOrEqual(policy.max.memory);
    expect(limits.pids).toBeLessThanOrEqual(policy.max.pids);
  }
}

/** A refusal: a FleetError of an intake code, naming the field (or, for unreadable JSON, saying so). */
function checkRefusal(err: unknown, message: object | string): void {
  if (!(err instanceof FleetError)) throw err; // a crash: not a refusal
  expect(REFUSALS).toContain(err.code);
  if (err.message.startsWith("src: not valid JSON:")) expect(typeof message).toBe("string");
  expect(err.message).toMatch(fieldFirst("src"));
}

function intake(message: object | string, policy: DevicePolicy, keys: KeyObject[]): Intake {
  return readDesired(message, {
    deviceId: DEVICE,
    source: "src",
    fromGroup: false,
    trustedKeys: keys,
    policy,
    target: `device/${DEVICE}`,
  });
}

describe("desired-state intake under generated documents", () => {
  it("accepts a document only within the policy, and refuses every other with a FleetError naming the field (10,000 documents)", () => {
    const seen = { accepted: 0, refused: new Map<string, number>() };
    fc.assert(
      fc.property(payload, ({ message, policy, keys }) => {
        let result: Intake;
        try {
          result = intake(message, policy, keys);
        } catch (err) {
          checkRefusal(err, message);
          const code = (err as FleetError).code;
          seen.refused.set(code, (seen.refused.get(code) ?? 0) + 1);
          return;
        }
        seen.accepted++;
        checkAccepted(result, policy);
      }),
      { numRuns: 10_000 },
    );
    // The generators reach every outcome, or the property says little.
    expect(seen.accepted).toBeGreaterThan(300);
    expect([...seen.refused.keys()].sort()).toEqual([...REFUSALS].sort());
  }, 120_000);

  it("leaves the running containers exactly as the good deployment left them for each refused document, through a real Agent (2,000 documents)", async () => {
    let refused = 0;
    let applied = 0;
    await fc.assert(
      fc.asyncProperty(payload, async ({ message, policy, keys }) => {
        const runtime = new SimulatedRuntime();
        const store = new SimulatedStore();
        const agent = new Agent({
          deviceId: DEVICE,
          groups: ["pilot"],
          runtime,
          store,
          version: "test",
          trustedKeys: keys,
          policy,
          pull: (ref, { signal }) => store.pull(ref, signal),
        });
        const good = published(
          {
            apiVersion: "fleetlet/v1",
            deployment: "good",
            generation: 1,
            target: "group/pilot",
            services: { web: { image: `${REG}/acme/web:1` }, db: { image: `${REG}/acme/db:1` } },
            update: { healthyWithinMs: 0 },
          },
          keys.length ? "trusted" : "none",
        );
        const { handler, pending: submitted } = trackedDesiredHandler(agent, ["pilot"]);
        const settle = async () => {
          await Promise.all(submitted);
          await agent.idle();
        };
        handler({ kind: "group", name: "pilot" }, Buffer.from(JSON.stringify(good)));
        await settle();
        expect(agent.reported()).toMatchObject({ deployment: "good", phase: "converged" });
        const before = runtime.list().map((c) => `${c.id} ${c.status} ${c.pid}`);
        const bytes = Buffer.from(typeof message === "string" ? message : JSON.stringify(message));
        handler({ kind: "device", name: DEVICE }, bytes);
        await settle();
        if (submitted.length === 1) {
          refused++;
          expect(runtime.list().map((c) => `${c.id} ${c.status} ${c.pid}`)).toEqual(before);
          expect(agent.reported()).toMatchObject({ deployment: "good", generation: 1, source: "group:pilot" });
          if (agent.phase === "rejected") {
            expect(REFUSALS).toContain(agent.lastError?.code);
            // An empty message names no field: it would clear the topic, which a device that requires signatures refuses.
            expect(agent.lastError?.message).toMatch(
              bytes.length
                ? fieldFirst("fleet device desired")
                : /^fleet device desired: an empty message cannot clear /,
            );
          }
        } else {
          applied++;
          checkServices(store.db.data.desired!, policy);
        }
        await agent.stop();
      }),
      { numRuns: 2_000 },
    );
    expect(refused).toBeGreaterThan(100);
    expect(applied).toBeGreaterThan(50);
  }, 120_000);
});
