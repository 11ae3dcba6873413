/**
 * The device's policy over desired-state documents, and the config settings
 * that turn a protection off: what is refused, with which code and field,
 * and what a document that passes runs under.
 */
import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { relaxedSettings } from "../../agent/config/relaxed-settings.js";
import { publicKeyFromBase64, publicKeyToBase64, signDocument } from "../../agent/protocol/signature.js";
import { readDesired } from "../../agent/reconcile/desired-intake.js";
import { specHash } from "../../agent/reconcile/plan.js";
import {
  type DevicePolicy,
  deviceAllowed,
  enforcePolicy,
  resolvePolicy,
  withDefaultLimits,
} from "../../agent/reconcile/policy.js";
import { deviceConfig } from "../../schemas/config.js";
import { containerSpec } from "../../schemas/container.js";
import { type DesiredStateInput, desiredState } from "../../schemas/desired.js";
import { MAX_DEVICES } from "../../schemas/device.js";
import { formatIssues } from "../../schemas/format-issues.js";

const REG = "reg.local:5000";
const config = (raw: Record<string, unknown> = {}) => deviceConfig.parse({ registries: { [REG]: {} }, ...raw });
const policyOf = (raw: Record<string, unknown> = {}) => resolvePolicy(config(raw));
const MiB = 1024 ** 2;

function doc(services: Record<string, Record<string, unknown>>): DesiredStateInput {
  return {
    apiVersion: "fleetlet/v1",
    deployment: "d",
    generation: 1,
    services: Object.fromEntries(
      Object.entries(services).map(([name, s]) => [name, { image: `${REG}/acme/web:1`, ...s }]),
    ) as DesiredStateInput["services"],
  };
}
const check = (d: DesiredStateInput, policy: DevicePolicy = policyOf()) =>
  enforcePolicy(desiredState.parse(d), policy, "src");

/** The config's error, as `loadDeviceConfig` words it. */
function configError(raw: Record<string, unknown>): string | undefined {
  const parsed = deviceConfig.safeParse(raw);
  return parsed.success ? undefined : formatIssues(parsed.error);
}

describe("resolvePolicy", () => {
  it("allows by default the registries the config has settings for, no host network, no devices, and the default limits", () => {
    expect(policyOf()).toEqual({
      registries: [REG],
      hostNetwork: false,
      devices: [],
      requireSigned: false,
      defaults: { memory: 256 * MiB, pids: 512 },
      max: { memory: 1024 * MiB, pids: 4096 },
    });
  });

  it("requires signatures by default once the device trusts a key, and takes an explicit setting either way", () => {
    expect(policyOf({ trustedKeys: ["k"] }).requireSigned).toBe(true);
    expect(policyOf({ trustedKeys: ["k"], policy: { requireSigned: false } }).requireSigned).toBe(false);
    expect(policyOf({ policy: { registries: ["Other.Example:443"] } }).registries).toEqual(["other.example:443"]);
  });
});

describe("enforcePolicy", () => {
  it.each([
    [
      "an image from a registry the device has no settings for",
      { web: { image: "evil.example:5000/x/y:1" } },
      "E_POLICY",
      "src: services.web.image: registry evil.example:5000 is not allowed by this device's policy (policy.registries: reg.local:5000)",
    ],
    [
      "the host's network",
      { web: { network: "host" } },
      "E_POLICY",
      'src: services.web.network: "host" is not allowed by this device\'s policy (policy.hostNetwork is false)',
    ],
    [
      "more memory than the maximum",
      { web: { resources: { memory: "2Gi" } } },
      "E_POLICY",
      "src: services.web.resources.memory: 2 GiB is above this device's maximum of 1 GiB (policy.max.memory)",
    ],
    [
      "more processes than the maximum",
      { web: { resources: { pids: 100_000 } } },
      "E_POLICY",
      "src: services.web.resources.pids: 100000 is above this device's maximum of 4096 (policy.max.pids)",
    ],
    [
      "an image reference with no registry",
      { web: { image: "busybox" } },
      "E_INVALID_DESIRED",
      'src: services.web.image: "busybox": name the registry, as in registry.local:5000/acme/web:1.2',
    ],
  ])("refuses %s, naming the field", (_what, services, code, message) => {
    expect(() => check(doc(services))).toThrow(expect.objectContaining({ code, message }));
  });

  it("names every field at fault, in every service", () => {
    const refused = doc({ a: { network: "host" }, b: { image: "x.example/y:1", resources: { pids: 5000 } } });
    expect(() => check(refused)).toThrow(
      /^src: services\.a\.network: .*; services\.b\.image: .*; services\.b\.resources\.pids: /,
    );
  });

  it("gives a service without limits the policy's defaults when its container is made, and keeps the limits a service sets", () => {
    const out = check(doc({ none: {}, some: { resources: { memory: "64Mi", cpus: 0.5 } } }));
    const defaults = policyOf().defaults;
    expect(withDefaultLimits(out.services.none!, defaults).resources).toEqual({ memory: 256 * MiB, pids: 512 });
    expect(withDefaultLimits(out.services.some!, defaults).resources).toEqual({
      memory: 64 * MiB,
      cpus: 0.5,
      pids: 512,
    });
  });

  it("leaves the document as it came, so the defaults never change a service's spec hash", () => {
    const parsed = desiredState.parse(doc({ none: {} }));
    const checked = check(doc({ none: {} }));
    expect(checked.services.none!.resources).toEqual({});
    expect(specHash(checked.services.none!, "sha256:x")).toBe(specHash(parsed.services.none!, "sha256:x"));
  });

  it("allows what the policy allows by name", () => {
    const policy = policyOf({
      policy: { hostNetwork: true, registries: ["x.example"], max: { memory: "4Gi" }, defaults: { pids: 64 } },
    });
    const out = check(doc({ web: { image: "x.example/y:1", network: "host", resources: { memory: "2Gi" } } }), policy);
    expect(withDefaultLimits(out.services.web!, policy.defaults)).toMatchObject({
      network: "host",
      resources: { memory: 2048 * MiB, pids: 64 },
    });
  });
});

describe("the agent field", () => {
  const pinned = (registry: string) => `${registry}/fleetlet/agent@sha256:${"a".repeat(64)}`;

  it("refuses an agent bundle from a registry the policy does not allow, naming agent.image", () => {
    const d = { ...doc({ web: {} }), agent: { version: "0.3.0", image: pinned("evil.example:5000") } };
    expect(() => check(d)).toThrow(
      expect.objectContaining({
        code: "E_POLICY",
        message:
          "src: agent.image: registry evil.example:5000 is not allowed by this device's policy (policy.registries: reg.local:5000)",
      }),
    );
  });

  it("accepts an agent bundle from an allowed registry and keeps it in the document", () => {
    const d = { ...doc({ web: {} }), agent: { version: "0.3.0", image: pinned(REG) } };
    expect(check(d).agent).toEqual({ version: "0.3.0", image: pinned(REG) });
  });

  it.each([
    [{ version: "0.3.0", image: `${REG}/fleetlet/agent:0.3.0` }, "agent.image: expected a reference pinned by digest"],
    [{ version: "../x", image: pinned(REG) }, "agent.version: expected a release version such as 0.3.0"],
  ])("refuses %j as a document error naming the field", (agent, message) => {
    const parsed = desiredState.safeParse({ ...doc({ web: {} }), agent });
    expect(parsed.success).toBe(false);
    expect(formatIssues(parsed.error!)).toContain(message);
  });
});

describe("a service's devices", () => {
  const serial = { path: "/dev/serial/by-id/usb-FTDI_A50285BI-if00-port0", target: "/dev/ttyS0" };

  it("are refused by default, naming the field of each device no glob allows", () => {
    const d = doc({ web: { devices: [{ path: "/dev/ttyUSB0" }, serial] } });
    expect(() => check(d)).toThrow(
      expect.objectContaining({
        code: "E_POLICY",
        message:
          "src: services.web.devices[0].path: /dev/ttyUSB0 is not allowed by this device's policy (policy.devices: none); " +
          `services.web.devices[1].path: ${serial.path} is not allowed by this device's policy (policy.devices: none)`,
      }),
    );
  });

  it("are allowed by the policy's globs, judged by the path the document names", () => {
    const policy = policyOf({ policy: { devices: ["/dev/ttyUSB*", "/dev/serial/by-id/*"] } });
    const out = check(
      doc({ web: { devices: [{ path: "/dev/ttyUSB0" }, serial], groupAdd: ["dialout", 997] } }),
      policy,
    );
    expect(out.services.web!.devices).toEqual([
      { path: "/dev/ttyUSB0", permissions: "rw" },
      { ...serial, permissions: "rw" },
    ]);
    expect(out.services.web!.groupAdd).toEqual(["dialout", 997]);
    const refused = doc({ web: { devices: [{ path: "/dev/ttyUSB0" }, { path: "/dev/sda" }] } });
    expect(() => check(refused, policy)).toThrow(/^src: services\.web\.devices\[1\]\.path: \/dev\/sda is not allowed/);
  });

  it.each([
    [{ path: "ttyUSB0" }, "services.web.devices.0.path: expected an absolute path under /dev/"],
    [{ path: "/etc/shadow" }, "services.web.devices.0.path: expected an absolute path under /dev/"],
    [{ path: "/dev/../etc/shadow" }, "services.web.devices.0.path: must be normalised"],
    [{ path: "/dev/ttyUSB0/" }, "services.web.devices.0.path: must be normalised"],
    [
      { path: "/dev/ttyUSB0", target: "/tmp/tty" },
      "services.web.devices.0.target: expected an absolute path under /dev/",
    ],
    [{ path: "/dev/ttyUSB0", target: "/dev/x/../../etc" }, "services.web.devices.0.target: must be normalised"],
    [{ path: "/dev/ttyUSB0", target: "/dev/null" }, "services.web.devices.0.target: must not replace"],
    [{ path: "/dev/ttyUSB0", target: "/dev/pts/0" }, "services.web.devices.0.target: must not replace"],
    [{ path: "/dev/ttyUSB0", permissions: "rx" }, 'services.web.devices.0.permissions: expected a subset of "rwm"'],
    [{ path: "/dev/ttyUSB0", permissions: "rr" }, 'services.web.devices.0.permissions: expected a subset of "rwm"'],
    [{ path: "/dev/zero" }, "services.web.devices.0.path: /dev/zero would replace the container's own /dev entry"],
  ])("refuses %j as a document error naming the field", (device, message) => {
    const parsed = desiredState.safeParse(doc({ web: { devices: [device] } }));
    expect(parsed.success).toBe(false);
    expect(formatIssues(parsed.error!)).toContain(message);
  });

  it("refuses two devices with one target, and a group that is neither a name nor a number", () => {
    const twice = desiredState.safeParse(
      doc({
        web: {
          devices: [
            { path: "/dev/ttyUSB0", target: "/dev/tty0" },
            { path: "/dev/ttyUSB1", target: "/dev/tty0" },
          ],
        },
      }),
    );
    expect(formatIssues(twice.error!)).toContain(
      "services.web.devices.1.target: /dev/tty0 is already the target of entry 0",
    );
    const group = desiredState.safeParse(doc({ web: { groupAdd: ["bad:name"] } }));
    expect(formatIssues(group.error!)).toContain("services.web.groupAdd.0");
    const negative = desiredState.safeParse(doc({ web: { groupAdd: [-1] } }));
    expect(formatIssues(negative.error!)).toContain("services.web.groupAdd.0");
  });
  it.each(["/dev", "/dev/", "/./dev", "//dev"])(
    "refuses a volume at %s, the container's own /dev where plugged devices' nodes are made, naming the field",
    (target) => {
      const parsed = desiredState.safeParse(doc({ web: { volumes: [{ name: "data", target }] } }));
      expect(parsed.success).toBe(false);
      expect(formatIssues(parsed.error!)).toContain("services.web.volumes.0.target: must not be /dev");
      expect(() =>
        containerSpec.parse({ layers: ["/l"], command: ["x"], volumes: [{ name: "data", target }] }),
      ).toThrow("must not be /dev");
    },
  );

  it("refuses more devices than a container's config can carry, naming the field", () => {
    const devices = Array.from({ length: MAX_DEVICES + 1 }, (_, i) => ({ path: `/dev/ttyUSB${i}` }));
    const parsed = desiredState.safeParse(doc({ web: { devices } }));
    expect(formatIssues(parsed.error!)).toContain(`services.web.devices: at most ${MAX_DEVICES} devices`);
    expect(desiredState.safeParse(doc({ web: { devices: devices.slice(1) } })).success).toBe(true);
  });
});

describe("the policy's device globs", () => {
  it.each([
    ["/dev/ttyUSB0", ["/dev/ttyUSB*"], true],
    ["/dev/ttyUSB10", ["/dev/ttyUSB?"], false],
    ["/dev/video3", ["/dev/video[0-9]"], true],
    ["/dev/bus/usb/001/002", ["/dev/bus/usb/*"], false],
    ["/dev/bus/usb/001/002", ["/dev/bus/usb/*/*"], true],
    ["/dev/ttyUSB0/../sda", ["/dev/ttyUSB0/*/*"], false],
    ["/dev/sda", [], false],
    ["/dev/i2c-1", ["/dev/i2c-1"], true],
    ["/dev/i2cx1", ["/dev/i2c.1"], false],
    ["/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0", ["/dev/serial/by-path/pci-0000:00:14.0-*"], true],
  ])("%s against %j: %s", (path, patterns, allowed) => {
    expect(deviceAllowed(path, patterns)).toBe(allowed);
  });
});

describe("the device config's protections", () => {
  it.each([
    [
      "plaintext MQTT without mqtt.insecure",
      { mqtt: { url: "mqtt://broker:1883" } },
      "mqtt.url: plaintext MQTT is refused: use mqtts:// or wss://, or set mqtt.insecure to true for a broker on a trusted network",
    ],
    ["plaintext websockets without mqtt.insecure", { mqtt: { url: "ws://broker/mqtt" } }, "mqtt.url: plaintext MQTT"],
    [
      "policy.requireSigned with no trusted key",
      { policy: { requireSigned: true } },
      "policy.requireSigned: true needs at least one key in trustedKeys",
    ],
    ["defaults above the maximum", { policy: { defaults: { pids: 9000 } } }, "policy.defaults.pids: 9000 is above"],
    [
      "a memory limit under 4 MiB",
      { policy: { max: { memory: "1Mi" } } },
      "policy.max.memory: expected at least 4 MiB",
    ],
    [
      "a device glob outside /dev",
      { policy: { devices: ["/etc/*"] } },
      "policy.devices.0: expected a glob under /dev/",
    ],
    ["a device glob with ..", { policy: { devices: ["/dev/../etc"] } }, "policy.devices.0: must not contain '..'"],
    ["a registry that is not host:port", { policy: { registries: ["https://x"] } }, "policy.registries.0: expected"],
    ["a keepalive of zero", { mqtt: { url: "mqtts://b", keepaliveSec: 0 } }, "mqtt.keepaliveSec:"],
  ])("refuses %s, naming the field", (_what, raw, message) => {
    expect(configError(raw)).toContain(message);
  });

  it("takes plaintext MQTT when mqtt.insecure says so, and keeps the keepalive suited to cellular links", () => {
    expect(configError({ mqtt: { url: "mqtt://b:1883", insecure: true } })).toBeUndefined();
    expect(deviceConfig.parse({ mqtt: { url: "mqtts://b" } }).mqtt).toMatchObject({
      insecure: false,
      keepaliveSec: 240,
    });
  });

  it("lists each protection the config turns off, for the agent to say once at start", () => {
    const relaxed = config({
      mqtt: { url: "mqtt://b:1883", insecure: true },
      policy: { hostNetwork: true, devices: ["/dev/ttyUSB*"] },
      registries: { [REG]: { insecure: true } },
    });
    expect(relaxedSettings(relaxed, resolvePolicy(relaxed)).map((r) => r.field)).toEqual([
      "mqtt.insecure",
      "policy.requireSigned",
      "policy.hostNetwork",
      "policy.devices",
      `registries.${REG}.insecure`,
    ]);
    const strict = config({ mqtt: { url: "mqtts://b" }, trustedKeys: ["k"] });
    expect(relaxedSettings(strict, resolvePolicy(strict))).toEqual([]);
  });
});

describe("a document's notAfter and signature at intake", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const trusted = [publicKeyFromBase64(publicKeyToBase64(publicKey))];
  const base = { ...doc({ web: {} }), target: "device/d1" };
  const intake = (
    payload: object,
    opts: { keys?: typeof trusted; policy?: DevicePolicy; now?: number; acceptedGeneration?: number } = {},
  ) =>
    readDesired(payload, {
      deviceId: "d1",
      source: "src",
      fromGroup: false,
      trustedKeys: opts.keys ?? trusted,
      policy: opts.policy ?? policyOf({ trustedKeys: ["k"] }),
      target: "device/d1",
      ...(opts.now !== undefined ? { now: opts.now } : {}),
      ...(opts.acceptedGeneration !== undefined ? { acceptedGeneration: opts.acceptedGeneration } : {}),
    });
  const at = Date.parse("2030-01-01T00:00:00Z");

  it("accepts a signed document before its notAfter and refuses it after, with E_EXPIRED", () => {
    const signed = signDocument({ ...base, notAfter: "2030-01-01T00:00:00Z" }, privateKey);
    expect(intake(signed, { now: at - 1000 })).toMatchObject({ kind: "apply", signed: true });
    expect(() => intake(signed, { now: at + 1000 })).toThrow(
      expect.objectContaining({
        code: "E_EXPIRED",
        message: expect.stringMatching(/^src: notAfter: the document expired at 2030-01-01T00:00:00Z/),
      }),
    );
    // Delivered again once accepted (the retained document at a reconnect), it is not new: no expiry applies.
    expect(intake(signed, { now: at + 1000, acceptedGeneration: 1 })).toMatchObject({ kind: "apply" });
    expect(() => intake(signed, { now: at + 1000, acceptedGeneration: 0 })).toThrow(/expired/);
  });

  it.each([
    ["a date without a time", "2030-01-01", "notAfter: expected an RFC 3339 time"],
    ["a number", 1893456000, "notAfter: expected an RFC 3339 time"],
  ])("refuses a notAfter that is %s", (_what, notAfter, message) => {
    expect(() => intake(signDocument({ ...base, notAfter }, privateKey), { now: at })).toThrow(
      expect.objectContaining({ code: "E_INVALID_DESIRED", message: expect.stringContaining(message) }),
    );
  });

  it("refuses a signed document on a device that trusts no key, instead of taking it unchecked", () => {
    const forged = { ...base, signature: Buffer.alloc(64, 1).toString("base64") };
    expect(() => intake(forged, { keys: [], policy: policyOf() })).toThrow(
      expect.objectContaining({ code: "E_BAD_SIGNATURE", message: expect.stringContaining("trusts no key") }),
    );
    expect(intake(base, { keys: [], policy: policyOf() })).toMatchObject({ kind: "apply", signed: false });
  });

  it("holds a document carrying agent to the same signature rules: signed whole, refused when the agent is swapped or unsigned", () => {
    const agent = { version: "0.3.0", image: `${REG}/fleetlet/agent@sha256:${"b".repeat(64)}` };
    const signed = signDocument({ ...base, agent }, privateKey) as typeof base & { agent: typeof agent };
    expect(intake(signed, { now: at })).toMatchObject({ kind: "apply", signed: true, doc: { agent } });
    const swapped = { ...signed, agent: { ...agent, image: `${REG}/fleetlet/agent@sha256:${"c".repeat(64)}` } };
    expect(() => intake(swapped, { now: at })).toThrow(expect.objectContaining({ code: "E_BAD_SIGNATURE" }));
    expect(() => intake({ ...base, agent }, { now: at })).toThrow(expect.objectContaining({ code: "E_BAD_SIGNATURE" }));
  });

  it("checks the policy after the signature, so a signed document is still held to the device's limits", () => {
    const signed = signDocument({ ...base, services: { web: { image: `${REG}/a/b:1`, network: "host" } } }, privateKey);
    expect(() => intake(signed)).toThrow(
      expect.objectContaining({ code: "E_POLICY", message: expect.stringContaining("services.web.network") }),
    );
  });
});
