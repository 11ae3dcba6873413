import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { rangeBytes } from "../../agent/registry/blob-fetch.js";
import { selectPlatform } from "../../agent/registry/platform.js";
import { formatReference, parseReference } from "../../agent/registry/reference.js";
import { RegistryClient } from "../../agent/registry/registry-client.js";
import { parseChallenge } from "../../agent/registry/www-authenticate.js";
import { chainIds } from "../../agent/store/snapshots.js";

const D = `sha256:${"a".repeat(64)}`;

describe("parseReference", () => {
  it.each([
    ["registry.local:5000/acme/web:1.2", { registry: "registry.local:5000", repository: "acme/web", tag: "1.2" }],
    ["registry.local:5000/acme/web", { registry: "registry.local:5000", repository: "acme/web", tag: "latest" }],
    [`127.0.0.1:5000/a/b/c@${D}`, { registry: "127.0.0.1:5000", repository: "a/b/c", digest: D }],
    [`localhost/x:t@${D}`, { registry: "localhost", repository: "x", tag: "t", digest: D }],
  ])("reads %s", (text, expected) => {
    expect(parseReference(text)).toMatchObject(expected);
  });
  it.each([
    ["busybox", /name the registry/],
    ["acme/web:1", /"acme" is not a registry host/],
    ["reg.local/Acme/web", /repository path must be lowercase/],
    ["reg.local/acme/web:bad tag", /tag "bad tag" is not valid/],
    ["reg.local/acme/web@sha512:abcd", /only sha256/],
  ])("refuses %s", (text, why) => {
    expect(() => parseReference(text)).toThrow(why);
  });
  it("formats back", () => {
    expect(formatReference(parseReference("reg.local:5000/a/b"))).toBe("reg.local:5000/a/b:latest");
  });
});

describe("parseChallenge", () => {
  it("reads a bearer challenge with quoted, comma-holding values", () => {
    expect(
      parseChallenge('Bearer realm="https://auth.local/token",service="reg",scope="repository:a/b:pull,push"'),
    ).toEqual({
      scheme: "bearer",
      params: { realm: "https://auth.local/token", service: "reg", scope: "repository:a/b:pull,push" },
    });
  });
  it("reads a basic challenge", () => {
    expect(parseChallenge('Basic realm="basic-realm"')).toEqual({ scheme: "basic", params: { realm: "basic-realm" } });
  });
  it("gives nothing for no header", () => {
    expect(parseChallenge(undefined)).toBeUndefined();
  });
});

describe("selectPlatform", () => {
  const entries = [
    { os: "linux", architecture: "amd64" },
    { os: "linux", architecture: "arm", variant: "v5" },
    { os: "linux", architecture: "arm", variant: "v6" },
    { os: "linux", architecture: "arm64", variant: "v8" },
    { os: "windows", architecture: "amd64" },
  ];
  it.each([
    [{ os: "linux", architecture: "amd64" }, 0],
    [{ os: "linux", architecture: "arm", variant: "v7" }, 2],
    [{ os: "linux", architecture: "arm", variant: "v6" }, 2],
    [{ os: "linux", architecture: "arm", variant: "v5" }, 1],
    [{ os: "linux", architecture: "arm64", variant: "v8" }, 3],
    [{ os: "linux", architecture: "riscv64" }, -1],
  ])("for %j picks entry %i", (wanted, index) => {
    expect(selectPlatform(entries, wanted)).toBe(index);
  });
  it("takes an entry without a variant when no variant matches", () => {
    expect(
      selectPlatform([{ os: "linux", architecture: "arm" }], { os: "linux", architecture: "arm", variant: "v7" }),
    ).toBe(0);
  });
});

describe("chainIds", () => {
  it("follows the OCI rule: the first is the diff id, then sha256 of 'parent child'", () => {
    const a = `sha256:${"1".repeat(64)}`;
    const b = `sha256:${"2".repeat(64)}`;
    const ab = `sha256:${createHash("sha256").update(`${a} ${b}`).digest("hex")}`;
    expect(chainIds([a, b])).toEqual([a, ab]);
    expect(chainIds([])).toEqual([]);
  });
});

describe("retry timing", () => {
  const client = new RegistryClient("reg.local:5000", {}, { baseMs: 100, maxMs: 1000 });
  it("honours Retry-After in seconds, capped at a minute", () => {
    expect(client.backoff(1, "3")).toBe(3000);
    expect(client.backoff(1, "3600")).toBe(60_000);
  });
  it("backs off exponentially with jitter below the cap", () => {
    for (const [attempt, ceiling] of [
      [1, 100],
      [2, 200],
      [4, 800],
      [9, 1000],
    ] as const) {
      const ms = client.backoff(attempt);
      expect(ms).toBeGreaterThanOrEqual(ceiling / 2);
      expect(ms).toBeLessThanOrEqual(ceiling);
    }
  });
});

describe("rangeBytes", () => {
  it.each([
    [1 << 20, 1, 256 << 10],
    [1 << 20, 4, 64 << 10],
    [100 << 20, 3, 2 << 20],
    [10 << 10, 1, 64 << 10],
  ])("under %i B/s shared by %i downloads asks for %i bytes at a time", (rate, parallel, bytes) => {
    expect(rangeBytes(rate, parallel)).toBe(bytes);
  });
});
