import { describe, expect, it } from "vitest";
import { canonicalJson } from "../../agent/protocol/canonical-json.js";
import { batches } from "../../agent/reconcile/apply-steps.js";
import { type ActualService, containerName, plan, specHash } from "../../agent/reconcile/plan.js";
import { type DesiredStateInput, desiredState } from "../../schemas/desired.js";

const IMG = "reg.local:5000/acme/web:1";
const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;

function doc(
  services: Record<string, Record<string, unknown>>,
  strategy = "download-then-swap",
): ReturnType<typeof desiredState.parse> {
  return desiredState.parse({
    apiVersion: "fleetlet/v1",
    deployment: "d",
    generation: 1,
    services,
    update: { strategy },
  } as DesiredStateInput);
}

function running(name: string, d: ReturnType<typeof doc>, digest = D1): ActualService {
  const hash = specHash(d.services[name]!, digest);
  return { name, containerId: containerName(name, hash), hash, running: true };
}

const kinds = (steps: ReturnType<typeof plan>) =>
  steps.map((s) => `${s.kind}:${"service" in s ? s.service : (s as { services: string[] }).services.join(",")}`);

describe("plan", () => {
  const web = { image: IMG, env: { PORT: "8080" } };

  it("starts a new service after pulling its image, then waits for health", () => {
    expect(kinds(plan(doc({ web }), new Map(), new Map([[IMG, D1]])))).toEqual([
      "pull:web",
      "start:web",
      "await-healthy:web",
    ]);
  });

  it("changes nothing when the spec and the image digest are unchanged", () => {
    const d = doc({ web });
    expect(plan(d, new Map([["web", running("web", d)]]), new Map([[IMG, D1]]))).toEqual([]);
  });

  it("replaces the container when the env changes", () => {
    const old = doc({ web });
    const next = doc({ web: { ...web, env: { PORT: "9090" } } });
    expect(kinds(plan(next, new Map([["web", running("web", old)]]), new Map([[IMG, D1]])))).toEqual([
      "pull:web",
      "stop:web",
      "remove:web",
      "start:web",
      "await-healthy:web",
    ]);
  });

  it("stops the old container with its own stop signal and timeout, not the new spec's", () => {
    const old = doc({ web: { ...web, stopSignal: "SIGINT", stopTimeoutMs: 300 } });
    const next = doc({ web: { ...web, env: { PORT: "9090" } } });
    const current = { ...running("web", old), stopSignal: "SIGINT", stopTimeoutMs: 300 };
    const stop = plan(next, new Map([["web", current]]), new Map([[IMG, D1]])).find((s) => s.kind === "stop");
    expect(stop).toMatchObject({ signal: "SIGINT", timeoutMs: 300 });
  });

  it("replaces the container when the tag now names another digest", () => {
    const d = doc({ web });
    expect(kinds(plan(d, new Map([["web", running("web", d, D1)]]), new Map([[IMG, D2]])))).toContain("start:web");
  });

  it.each([
    [
      "download-then-swap",
      ["pull:web", "stop:web", "remove:web", "start:web", "await-healthy:web", "stop:gone", "remove:gone"],
    ],
    [
      "stop-then-download",
      ["stop:web", "remove:web", "stop:gone", "remove:gone", "pull:web", "start:web", "await-healthy:web"],
    ],
    [
      "start-then-stop",
      ["pull:web", "start:web", "await-healthy:web", "stop:web", "remove:web", "stop:gone", "remove:gone"],
    ],
  ])("orders the steps for %s", (strategy, expected) => {
    const old = doc({ web, gone: { image: IMG } });
    const next = doc({ web: { ...web, env: { PORT: "1" } } }, strategy);
    const actual = new Map([
      ["web", running("web", old)],
      ["gone", running("gone", old)],
    ]);
    expect(kinds(plan(next, actual, new Map([[IMG, D1]])))).toEqual(expected);
  });

  it("restarts a stopped service with an unchanged spec by removing the old container first", () => {
    const d = doc({ web });
    const stopped = { ...running("web", d), running: false };
    expect(kinds(plan(d, new Map([["web", stopped]]), new Map([[IMG, D1]])))).toEqual([
      "pull:web",
      "stop:web",
      "remove:web",
      "start:web",
      "await-healthy:web",
    ]);
  });

  it("groups the steps of several services by kind, so they can run side by side", () => {
    const old = doc({ a: web, b: web });
    const next = doc({ a: { ...web, env: { X: "1" } }, b: { ...web, env: { X: "1" } } });
    const steps = plan(
      next,
      new Map([
        ["a", running("a", old)],
        ["b", running("b", old)],
      ]),
      new Map([[IMG, D1]]),
    );
    expect(kinds(steps)).toEqual([
      "pull:a",
      "pull:b",
      "stop:a",
      "stop:b",
      "remove:a",
      "remove:b",
      "start:a",
      "start:b",
      "await-healthy:a,b",
    ]);
    expect(batches(steps).map((b) => b.length)).toEqual([2, 2, 2, 2, 1]);
  });

  it("gives two generations of a service distinct container names", () => {
    const a = specHash(doc({ web }).services.web!, D1);
    const b = specHash(doc({ web }).services.web!, D2);
    expect(containerName("web", a)).not.toBe(containerName("web", b));
  });

  it("hashes specs canonically, whatever the key order", () => {
    expect(canonicalJson({ b: 1, a: [{ d: 2, c: 3 }] })).toBe('{"a":[{"c":3,"d":2}],"b":1}');
  });
});

describe("desired-state validation", () => {
  it.each([
    [{ apiVersion: "v0" }, /apiVersion: expected "fleetlet\/v1"/],
    [{ generation: "12" }, /generation:/],
    [{ update: { strategy: "yolo" } }, /update.strategy:/],
    [{ services: { web: { image: IMG, restart: "sometimes" } } }, /services.web.restart:/],
    [{ services: { "bad name!": { image: IMG } } }, /services/],
  ])("names the field at fault in %j", (patch, message) => {
    const r = desiredState.safeParse({
      apiVersion: "fleetlet/v1",
      deployment: "d",
      generation: 1,
      services: {},
      ...patch,
    });
    expect(r.success).toBe(false);
    const text = r.error!.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ");
    expect(text).toMatch(message);
  });
});
