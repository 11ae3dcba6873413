/** The pure parts of the fleet side: canonical JSON, signatures, rollout waves and their verdicts. */
import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { finishDocument } from "../../agent/fleet/desired-document.js";
import type { DeviceView } from "../../agent/fleet/fleet-view.js";
import { parseDuration, parseFailureLimit, parseWaves } from "../../agent/fleet/rollout.js";
import { judgeWave, standing } from "../../agent/fleet/wave-judge.js";
import { canonicalJson } from "../../agent/protocol/canonical-json.js";
import {
  publicKeyFromBase64,
  publicKeyToBase64,
  signDocument,
  verifyDocument,
} from "../../agent/protocol/signature.js";
import { inRolloutWave } from "../../agent/protocol/waves.js";
import { readDesired } from "../../agent/reconcile/desired-intake.js";
import { resolvePolicy } from "../../agent/reconcile/policy.js";
import { deviceConfig } from "../../schemas/config.js";
import type { ReportedState } from "../../schemas/reported.js";

describe("canonical JSON (RFC 8785)", () => {
  it("serialises the RFC's own example byte for byte", () => {
    const input = JSON.parse(
      '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "literals": [null, true, false]}',
    );
    expect(canonicalJson(input)).toBe(
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    );
  });

  it("sorts members by UTF-16 code units, as the RFC's sorting example does", () => {
    const input = {
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis",
    };
    // Read the names off the text: JSON.parse would put the integer-like "1" first again.
    const keys = [...canonicalJson(input).matchAll(/"((?:[^"\\]|\\.)*)":/g)].map((m) => JSON.parse(`"${m[1]}"`));
    expect(keys).toEqual(["\r", "1", "\u0080", "\u00f6", "\u20ac", "\ud83d\ude00", "\ufb33"]);
  });

  it.each([
    [{ b: 1, a: { d: [1, { z: 0, y: 1 }], c: "x" } }, '{"a":{"c":"x","d":[1,{"y":1,"z":0}]},"b":1}'],
    [{ a: undefined, b: -0 }, '{"b":0}'],
    [[], "[]"],
    ["line\u2028sep", '"line\u2028sep"'],
  ])("writes %j as %s", (value, out) => {
    expect(canonicalJson(value)).toBe(out);
  });

  it.each([
    [
      "a lone high surrogate in a string",
      { a: ["ok", "x\ud800y"] },
      "$.a[1]: the string holds a lone surrogate (U+D800 at index 1)",
    ],
    ["a lone low surrogate in a string", { a: "\udc00" }, "$.a: the string holds a lone surrogate (U+DC00 at index 0)"],
    ["a surrogate pair the wrong way round", { a: "\ude00\ud83d" }, "$.a: the string holds a lone surrogate (U+DE00"],
    ["a lone surrogate in a member name", { b: { "k\udbff": 1 } }, "$.b: a member name holds a lone surrogate (U+DBFF"],
  ])("refuses %s, as RFC 8785 does, with a clear error", (_what, value, message) => {
    expect(() => canonicalJson(value)).toThrow(
      expect.objectContaining({ code: "E_INVALID_ARGUMENT", message: expect.stringContaining(message) }),
    );
    expect(() => canonicalJson(value)).toThrow("which has no UTF-8 form; RFC 8785 refuses it");
  });

  it("keeps a surrogate pair, which is one code point", () => {
    expect(canonicalJson({ "\ud83d\ude00": "\ud83d\ude00" })).toBe('{"\ud83d\ude00":"\ud83d\ude00"}');
  });

  it("refuses values JSON cannot hold, naming where", () => {
    expect(() => canonicalJson({ a: [1, Number.NaN] })).toThrow("$.a[1]: NaN has no JSON form");
    expect(() => canonicalJson({ f: () => 1 })).toThrow("$.f: a function has no JSON form");
  });
});

describe("desired-state signatures", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const other = generateKeyPairSync("ed25519");
  const trusted = [publicKeyFromBase64(publicKeyToBase64(publicKey))];
  const doc = {
    apiVersion: "fleetlet/v1",
    deployment: "d",
    generation: 3,
    services: { web: { image: "r/x:1", env: { A: "1" } } },
  };

  it("verifies a signed document however its members are ordered", () => {
    const signed = signDocument(doc, privateKey);
    const reordered = JSON.parse(
      JSON.stringify({
        signature: signed.signature,
        services: signed.services,
        generation: 3,
        deployment: "d",
        apiVersion: "fleetlet/v1",
      }),
    );
    expect(() => verifyDocument(reordered, trusted, "t")).not.toThrow();
  });

  it.each([
    ["unsigned", () => doc, "the document is not signed"],
    [
      "tampered",
      () => ({ ...signDocument(doc, privateKey), generation: 4 }),
      "does not verify with any of the 1 trusted key(s)",
    ],
    ["signed by another key", () => signDocument(doc, other.privateKey), "does not verify"],
    ["a malformed signature", () => ({ ...doc, signature: "AAAA" }), "expected base64 of a 64-byte ed25519 signature"],
  ])("rejects a document %s with E_BAD_SIGNATURE", (_what, make, message) => {
    expect(() => verifyDocument(make(), trusted, "src")).toThrow(
      expect.objectContaining({ code: "E_BAD_SIGNATURE", message: expect.stringContaining(message) }),
    );
  });

  it("accepts an unsigned document when signatures are not required", () => {
    expect(verifyDocument(doc, [], "src")).toBe(false);
    expect(verifyDocument(doc, trusted, "src", { required: false })).toBe(false);
  });

  it("checks a signature whenever there is one, even where signatures are not required", () => {
    expect(verifyDocument(signDocument(doc, privateKey), trusted, "src", { required: false })).toBe(true);
    expect(() => verifyDocument(signDocument(doc, other.privateKey), trusted, "src", { required: false })).toThrow(
      expect.objectContaining({ code: "E_BAD_SIGNATURE" }),
    );
    expect(() => verifyDocument({ ...doc, signature: Buffer.alloc(64).toString("base64") }, [], "src")).toThrow(
      expect.objectContaining({ code: "E_BAD_SIGNATURE", message: expect.stringContaining("trusts no key") }),
    );
  });

  it("refuses to sign, and refuses to verify, a document holding a lone surrogate", () => {
    const odd = { ...doc, deployment: "d\ud800" };
    expect(() => signDocument(odd, privateKey)).toThrow(expect.objectContaining({ code: "E_INVALID_ARGUMENT" }));
    expect(() =>
      verifyDocument({ ...odd, signature: signDocument(doc, privateKey).signature }, trusted, "src"),
    ).toThrow(expect.objectContaining({ code: "E_BAD_SIGNATURE", message: expect.stringContaining("lone surrogate") }));
  });

  it("refuses a trusted key that is not a raw ed25519 key, naming the config field", () => {
    expect(() => publicKeyFromBase64("bm90IGEga2V5", "trustedKeys[1]")).toThrow(
      /trustedKeys\[1\]: "bm90IGEga2V5" is not an ed25519 public key/,
    );
  });

  it("checks the signature before the schema, so a tampered valid-looking document never reaches validation", () => {
    const tampered = { ...signDocument(doc, privateKey), services: { web: { image: "evil/x:1" } } };
    expect(() =>
      readDesired(tampered, {
        deviceId: "d1",
        source: "s",
        fromGroup: false,
        trustedKeys: trusted,
        policy: resolvePolicy(deviceConfig.parse({ registries: { r: {} }, trustedKeys: ["x"] })),
      }),
    ).toThrow(expect.objectContaining({ code: "E_BAD_SIGNATURE" }));
  });
});

describe("a document's notAfter, as fleetctl sets it", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const raw = { apiVersion: "fleetlet/v1", deployment: "d", services: {} };
  const now = Date.parse("2026-06-01T00:00:00Z");

  it("sets notAfter to --valid-for after now, under the signature", () => {
    const { payload, doc } = finishDocument(
      raw,
      { generation: 2, target: "group/g", validForMs: 24 * 3_600_000 },
      { file: "f", key: privateKey, now },
    );
    expect(doc.notAfter).toBe("2026-06-02T00:00:00.000Z");
    const published = JSON.parse(payload);
    expect(published.notAfter).toBe("2026-06-02T00:00:00.000Z");
    expect(verifyDocument(published, [publicKeyFromBase64(publicKeyToBase64(publicKey))], "t")).toBe(true);
  });

  it("refuses to publish a document whose own notAfter has passed, and replaces it with --valid-for", () => {
    const late = { ...raw, notAfter: "2026-05-31T00:00:00Z" };
    expect(() => finishDocument(late, { generation: 2, target: "group/g" }, { file: "f", now })).toThrow(
      expect.objectContaining({ code: "E_EXPIRED", exitCode: 2, message: expect.stringContaining("f: notAfter:") }),
    );
    const { doc } = finishDocument(late, { generation: 2, target: "group/g", validForMs: 60_000 }, { file: "f", now });
    expect(doc.notAfter).toBe("2026-06-01T00:01:00.000Z");
  });
});

describe("rollout waves", () => {
  const devices = Array.from({ length: 2000 }, (_, i) => `dev-${i}`);

  it("puts about the requested share of devices in a wave, and only widens it as the percent grows", () => {
    const share = (p: number) => devices.filter((d) => inRolloutWave(d, "web-7", p));
    expect(share(0)).toEqual([]);
    expect(share(100)).toHaveLength(devices.length);
    const five = share(5);
    const twentyFive = share(25);
    expect(five.length).toBeGreaterThan(60);
    expect(five.length).toBeLessThan(140);
    expect(twentyFive.length).toBeGreaterThan(420);
    expect(twentyFive.length).toBeLessThan(580);
    for (const d of five) expect(twentyFive).toContain(d);
  });

  it("draws a different wave for another deployment", () => {
    const a = devices.filter((d) => inRolloutWave(d, "web-7", 10));
    const b = devices.filter((d) => inRolloutWave(d, "web-8", 10));
    expect(a).not.toEqual(b);
  });

  const doc = (percent: number, rollback = false) => ({
    apiVersion: "fleetlet/v1",
    deployment: "web-7",
    generation: 1,
    services: {},
    rollout: { percent, rollback },
  });
  it.each([
    ["a group document, in the wave", "apply", true, 100, false],
    ["a group document, outside the wave", "notInWave", true, 0, false],
    ["a group rollback, in the wave", "rollback", true, 100, true],
    ["a group rollback, outside the wave", "notInWave", true, 0, true],
    ["a device's own document, whatever its percent", "apply", false, 0, true],
  ])("reads %s as %s", (_what, kind, fromGroup, percent, rollback) => {
    expect(
      readDesired(doc(percent, rollback), {
        deviceId: "dev-1",
        source: "s",
        fromGroup,
        trustedKeys: [],
        policy: resolvePolicy(deviceConfig.parse({})),
      }).kind,
    ).toBe(kind);
  });
});

describe("wave verdicts", () => {
  const t = { deployment: "web-2", generation: 5, publishedAt: 1000 };
  const rep = (over: Partial<ReportedState>): ReportedState => ({
    deviceId: "x",
    deployment: "web-2",
    generation: 5,
    phase: "converged",
    lastGood: "web-2",
    services: {},
    lastError: null,
    agent: { version: "0", uptimeSec: 1, cgroupMode: "v2" },
    ts: "",
    ...over,
  });
  const dev = (
    deviceId: string,
    reported: ReportedState | undefined,
    online: boolean | undefined = true,
    seenAt = 2000,
  ): DeviceView => ({ deviceId, reported, online, seenAt });

  it.each([
    ["converged and past its health window", "healthy", rep({}), true],
    ["converged but still in its health window", "pending", rep({ lastGood: "web-1" }), true],
    ["pulling", "pending", rep({ phase: "pulling" }), true],
    [
      "rolled back by its own health gate",
      "failed",
      rep({ phase: "rolledBack", lastError: { code: "E_UNHEALTHY", message: "web exited" } }),
      true,
    ],
    ["failed", "failed", rep({ phase: "failed" }), true],
    ["on the old deployment and offline", "offline", rep({ deployment: "web-1", generation: 4 }), false],
    [
      "rejecting the document",
      "failed",
      rep({
        deployment: "web-1",
        generation: 4,
        phase: "rejected",
        lastError: { code: "E_BAD_SIGNATURE", message: "m" },
      }),
      true,
    ],
    ["never reported", "pending", undefined, undefined],
  ])("counts a device %s as %s", (_what, expected, reported, online) => {
    expect(standing(dev("d", reported as ReportedState | undefined, online as boolean | undefined), t).standing).toBe(
      expected,
    );
  });

  it("does not blame a rejection that came before the wave's document", () => {
    expect(
      standing(dev("d", rep({ deployment: "web-1", generation: 4, phase: "rejected" }), true, 500), t).standing,
    ).toBe("pending");
  });

  const all = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"].map((id) => dev(id, rep({ deviceId: id })));
  it("is done when every device in the wave is healthy, and judges only the wave", () => {
    const mixed = all.map((d, i) => (i < 5 ? d : dev(d.deviceId, rep({ deviceId: d.deviceId, phase: "pulling" }))));
    const inWave = mixed.filter((d) => inRolloutWave(d.deviceId, "web-2", 50));
    const { verdict, status } = judgeWave(mixed, t, 50, { count: 0 }, 100, 60_000);
    expect(status.devices).toBe(inWave.length);
    expect(verdict).toBe(inWave.every((d) => d.reported?.phase === "converged") ? "done" : "wait");
  });

  it("leaves out of every wave a device that follows its own document", () => {
    const own = all.map((d, i) =>
      i === 0 ? dev(d.deviceId, rep({ deviceId: d.deviceId, deployment: "mine", generation: 9, source: "device" })) : d,
    );
    const { verdict, status } = judgeWave(own, t, 100, { count: 0 }, 61_000, 60_000);
    expect(status.devices).toBe(all.length - 1);
    expect(verdict).toBe("done");
    // The same device following the group's document, late, is a failure.
    expect(
      judgeWave(
        own.map((d, i) =>
          i === 0
            ? dev(d.deviceId, rep({ deviceId: d.deviceId, deployment: "mine", generation: 9, source: "group:g" }))
            : d,
        ),
        t,
        100,
        { count: 0 },
        61_000,
        60_000,
      ).verdict,
    ).toBe("halt");
  });

  it("halts when failures pass the limit, and counts the late as failed once the window closes", () => {
    const failing = all.map((d, i) => (i < 2 ? dev(d.deviceId, rep({ deviceId: d.deviceId, phase: "failed" })) : d));
    expect(judgeWave(failing, t, 100, { percent: 10 }, 100, 60_000).verdict).toBe("halt");
    expect(judgeWave(failing, t, 100, { percent: 20 }, 100, 60_000).verdict).toBe("done");
    const slow = all.map((d, i) => (i < 3 ? dev(d.deviceId, rep({ deviceId: d.deviceId, phase: "pulling" })) : d));
    expect(judgeWave(slow, t, 100, { count: 3 }, 100, 60_000).verdict).toBe("wait");
    const late = judgeWave(slow, t, 100, { count: 2 }, 61_000, 60_000);
    expect(late.verdict).toBe("halt");
    expect(late.status.failures[0]?.reason).toMatch(/^not healthy within 60 s: pulling/);
  });
});

describe("rollout options", () => {
  it.each([
    ["5,25,100", [5, 25, 100]],
    ["100", [100]],
  ])("reads --waves %s", (text, waves) => expect(parseWaves(text)).toEqual(waves));
  it.each(["", "0,50", "50,25", "10,abc", "150"])("refuses --waves %j", (text) =>
    expect(() => parseWaves(text)).toThrow(/--waves/),
  );
  it("reads --max-failures as a count or a percentage", () => {
    expect(parseFailureLimit("10%")).toEqual({ percent: 10 });
    expect(parseFailureLimit("3")).toEqual({ count: 3 });
    expect(() => parseFailureLimit("1.5")).toThrow(/--max-failures 1.5/);
    expect(() => parseFailureLimit("120%")).toThrow(/--max-failures/);
  });
  it("reads --healthy-within durations", () => {
    expect(parseDuration("2m", "--healthy-within")).toBe(120_000);
    expect(parseDuration("90s", "x")).toBe(90_000);
    expect(parseDuration("1500ms", "x")).toBe(1500);
    expect(parseDuration("7d", "--valid-for")).toBe(7 * 86_400_000);
    expect(() => parseDuration("2 minutes", "--healthy-within")).toThrow(
      "--healthy-within 2 minutes: expected a duration such as 90s, 2m, 1h or 7d",
    );
  });
});
