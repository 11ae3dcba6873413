import { describe, expect, it } from "vitest";
import { DEFAULT_DEVICE_RULES, deviceWrites, ruleChanges } from "../../agent/runtime/device-rules.js";

describe("deviceWrites", () => {
  it.each(["v1", "hybrid"] as const)("on %s denies everything, then allows the list, in the devices cgroup", (mode) => {
    const writes = deviceWrites(mode);
    expect(writes[0]).toEqual({ hierarchy: "devices", file: "devices.deny", value: "a" });
    expect(writes.slice(1)).toEqual(
      DEFAULT_DEVICE_RULES.map((value) => ({ hierarchy: "devices", file: "devices.allow", value })),
    );
  });

  it("on v2 writes no file: the shim's BPF program carries the rules", () => {
    expect(deviceWrites("v2")).toEqual([]);
  });

  it("opens only null, zero, full, random, urandom, tty, ptmx and the pts, and makes any node", () => {
    const opened = DEFAULT_DEVICE_RULES.filter((r) => r.endsWith("rwm"));
    expect(opened).toEqual([
      "c 1:3 rwm",
      "c 1:5 rwm",
      "c 1:7 rwm",
      "c 1:8 rwm",
      "c 1:9 rwm",
      "c 5:0 rwm",
      "c 5:2 rwm",
      "c 136:* rwm",
    ]);
    expect(DEFAULT_DEVICE_RULES.filter((r) => !r.endsWith("rwm"))).toEqual(["c *:* m", "b *:* m"]);
  });
});

describe("ruleChanges (v1, a running container)", () => {
  it("allows what is new and denies what went", () => {
    expect(ruleChanges(["c 188:0 rw"], ["c 188:1 rw"])).toEqual({ allow: ["c 188:1 rw"], deny: ["c 188:0 rw"] });
  });

  it("denies only the access no other rule of the same numbers still gives", () => {
    expect(ruleChanges(["c 10:200 rw", "c 10:200 r"], ["c 10:200 rw"])).toEqual({ allow: [], deny: [] });
    expect(ruleChanges(["c 10:200 rw", "c 10:200 r"], ["c 10:200 r"])).toEqual({ allow: [], deny: ["c 10:200 w"] });
    // A device with /dev/null's numbers going leaves the default rule whole.
    expect(ruleChanges(["c 1:3 r"], [])).toEqual({ allow: [], deny: [] });
  });
});
