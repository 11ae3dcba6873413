import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { canonicalJson } from "../../agent/protocol/canonical-json.js";
import { batches } from "../../agent/reconcile/apply-steps.js";
import {
  type ActualService,
  type ActualState,
  containerName,
  plan,
  type StoredImage,
  specHash,
} from "../../agent/reconcile/plan.js";
import { type DesiredStateInput, desiredState } from "../../schemas/desired.js";

const IMG = "reg.local:5000/acme/web:1";
const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;
/** specHash of the `web` service below at D1, as the agent before `devices` and `groupAdd` computed it. */
const HASH_BEFORE_DEVICES = "d0e92749d203e47c3239d166da410599e0e9a44e2c7a9fd4440ecdb3af10d12a";

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

function running(name: string, d: ReturnType<typeof doc>, digest = D1, state: ActualState = "running"): ActualService {
  const hash = specHash(d.services[name]!, digest);
  return { name, containerId: containerName(name, hash), hash, state };
}

const kinds = (steps: ReturnType<typeof plan>) =>
  steps.map((s) => `${s.kind}:${"service" in s ? s.service : "image" in s ? s.image : s.services.join(",")}`);

/** The store's view: a reference, its digest, and whether it is ready for this apply. */
const ready = (digest = D1) => new Map<string, StoredImage>([[IMG, { digest, ready: true }]]);
const known = (digest = D1) => new Map<string, StoredImage>([[IMG, { digest, ready: false }]]);
const absent = () => new Map<string, StoredImage>();

describe("plan", () => {
  const web = { image: IMG, env: { PORT: "8080" } };

  it("pulls a missing image before anything else, then starts the service and waits for health", () => {
    const d = doc({ web });
    expect(kinds(plan(d, new Map(), absent()))).toEqual([`pull:${IMG}`]);
    expect(kinds(plan(d, new Map(), ready()))).toEqual(["start:web", "await-healthy:web"]);
  });

  it("pulls each image once, however many services use it", () => {
    expect(kinds(plan(doc({ a: web, b: web }), new Map(), absent()))).toEqual([`pull:${IMG}`]);
  });

  it("changes nothing when the spec and the image digest are unchanged", () => {
    const d = doc({ web });
    expect(plan(d, new Map([["web", running("web", d)]]), ready())).toEqual([]);
  });

  it("asks the registry again about a tag it knows but has not resolved in this apply, and touches nothing meanwhile", () => {
    const d = doc({ web });
    expect(kinds(plan(d, new Map([["web", running("web", d)]]), known()))).toEqual([`pull:${IMG}`]);
  });

  it("replaces the container when the env changes", () => {
    const old = doc({ web });
    const next = doc({ web: { ...web, env: { PORT: "9090" } } });
    expect(kinds(plan(next, new Map([["web", running("web", old)]]), ready()))).toEqual([
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
    const stop = plan(next, new Map([["web", current]]), ready()).find((s) => s.kind === "stop");
    expect(stop).toMatchObject({ signal: "SIGINT", timeoutMs: 300 });
  });

  it("replaces the container when the tag now names another digest", () => {
    const d = doc({ web });
    expect(kinds(plan(d, new Map([["web", running("web", d, D1)]]), ready(D2)))).toContain("start:web");
  });

  it.each([
    [
      "download-then-swap",
      [`pull:${IMG}`],
      ["stop:web", "remove:web", "start:web", "await-healthy:web", "stop:gone", "remove:gone"],
    ],
    [
      "stop-then-download",
      ["stop:web", "stop:gone", "remove:web", "remove:gone", `pull:${IMG}`],
      ["start:web", "await-healthy:web"],
    ],
    [
      "start-then-stop",
      [`pull:${IMG}`],
      ["start:web", "await-healthy:web", "stop:web", "stop:gone", "remove:web", "remove:gone"],
    ],
  ])("orders the passes for %s: first the download, then the swap", (strategy, first, second) => {
    const old = doc({ web, gone: { image: IMG } });
    const next = doc({ web: { ...web, env: { PORT: "1" } } }, strategy);
    const before = new Map([
      ["web", running("web", old)],
      ["gone", running("gone", old)],
    ]);
    expect(kinds(plan(next, before, known()))).toEqual(first);
    // The first pass done: under stop-then-download the old containers are gone already.
    const after = strategy === "stop-then-download" ? new Map() : before;
    expect(kinds(plan(next, after, ready()))).toEqual(second);
  });

  it("under stop-then-download, stops a service whose image the store has never seen before downloading it", () => {
    const old = doc({ web }, "stop-then-download");
    const next = doc({ web: { ...web, image: "reg.local:5000/acme/other:2" } }, "stop-then-download");
    expect(kinds(plan(next, new Map([["web", running("web", old)]]), ready()))).toEqual([
      "stop:web",
      "remove:web",
      "pull:reg.local:5000/acme/other:2",
    ]);
  });

  it.each<[ActualState, string[]]>([
    ["running", []],
    ["restarting", []],
    ["exited", []],
    ["failed", ["stop:web", "remove:web", "start:web", "await-healthy:web"]],
    ["missing", ["stop:web", "remove:web", "start:web", "await-healthy:web"]],
  ])("with an unchanged spec and a container %s, plans %j", (state, expected) => {
    const d = doc({ web });
    expect(kinds(plan(d, new Map([["web", running("web", d, D1, state)]]), ready()))).toEqual(expected);
  });

  it("leaves a failed service alone when its restart policy is never", () => {
    const d = doc({ web: { ...web, restart: "never" } });
    expect(plan(d, new Map([["web", running("web", d, D1, "failed")]]), ready())).toEqual([]);
  });

  it("under start-then-stop, removes a failed container before starting one of the same name", () => {
    const d = doc({ web }, "start-then-stop");
    expect(kinds(plan(d, new Map([["web", running("web", d, D1, "failed")]]), ready()))).toEqual([
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
      ready(),
    );
    expect(kinds(steps)).toEqual([
      "stop:a",
      "stop:b",
      "remove:a",
      "remove:b",
      "start:a",
      "start:b",
      "await-healthy:a,b",
    ]);
    expect(batches(steps).map((b) => b.length)).toEqual([2, 2, 2, 1]);
  });

  it("gives two generations of a service distinct container names", () => {
    const a = specHash(doc({ web }).services.web!, D1);
    const b = specHash(doc({ web }).services.web!, D2);
    expect(containerName("web", a)).not.toBe(containerName("web", b));
  });

  it("hashes a service that leaves init off as before init existed, so an agent upgrade replaces nothing", () => {
    const spec = doc({ web }).services.web!;
    expect(spec.init).toBe(false);
    const { init: _added, devices: _d, groupAdd: _g, networks: _n, ports: _p, ...before } = spec;
    const hashBefore = createHash("sha256")
      .update(canonicalJson({ spec: before, imageDigest: D1 }))
      .digest("hex");
    expect(specHash(spec, D1)).toBe(hashBefore);
    // Turning it on is a change of spec: the container is replaced.
    expect(specHash(doc({ web: { ...web, init: true } }).services.web!, D1)).not.toBe(hashBefore);
  });

  it("hashes a service without devices or groupAdd as before they existed, so an agent upgrade replaces nothing", () => {
    const spec = doc({ web }).services.web!;
    expect(spec.devices).toEqual([]);
    expect(spec.groupAdd).toEqual([]);
    const { init: _i, devices: _d, groupAdd: _g, networks: _n, ports: _p, ...before } = spec;
    const hashBefore = createHash("sha256")
      .update(canonicalJson({ spec: before, imageDigest: D1 }))
      .digest("hex");
    expect(specHash(spec, D1)).toBe(hashBefore);
    // The hash the agent before devices gave this spec (computed at that commit): a running container keeps it.
    expect(specHash(spec, D1)).toBe(HASH_BEFORE_DEVICES);
    // Asking for a device or a group is a change of spec: the container is replaced.
    const withDevice = doc({ web: { ...web, devices: [{ path: "/dev/ttyUSB0" }] } }).services.web!;
    expect(specHash(withDevice, D1)).not.toBe(hashBefore);
    expect(specHash(doc({ web: { ...web, groupAdd: ["dialout"] } }).services.web!, D1)).not.toBe(hashBefore);
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
