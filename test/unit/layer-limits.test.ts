/**
 * The rules a layer is held to, as small pure functions: which xattrs pass,
 * how much a blob may decompress to, which pax records and numbers are
 * well-formed; and the README's table of limits, checked against the one
 * place the defaults live.
 */
import { readFileSync } from "node:fs";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { DEFAULT_LAYER_LIMITS, maxDecompressedBytes } from "../../agent/store/layer-limits.js";
import { parsePax, readTar } from "../../agent/store/tar-reader.js";
import { xattrAllowed } from "../../agent/store/xattr-policy.js";
import { fileEntry, paxHeader, paxRecord } from "../support/hostile-tar.js";

const MiB = 1024 * 1024;

describe("the xattr allow-list", () => {
  it.each([
    ["user.note", true],
    ["security.capability", true],
    ["user.overlay.redirect", false],
    ["trusted.overlay.redirect", false],
    ["trusted.overlay.opaque", false],
    ["trusted.anything", false],
    ["system.posix_acl_access", false],
    ["system.posix_acl_default", false],
    ["security.selinux", false],
    ["security.ima", false],
    ["user.with\0nul", false],
    ["", false],
  ])("%j is applied: %s", (name, applied) => {
    expect(xattrAllowed(name)).toBe(applied);
  });
});

describe("the decompressed-size cap", () => {
  it.each([
    [0, 16 * MiB],
    [1 * MiB, 116 * MiB],
    [200 * MiB, 16 * 1024 * MiB], // the absolute cap wins
    [undefined, 16 * 1024 * MiB],
  ])("a blob of %s bytes may hold %s", (size, cap) => {
    expect(maxDecompressedBytes(DEFAULT_LAYER_LIMITS, size)).toBe(cap);
  });
});

async function firstHeader(tar: Buffer) {
  for await (const ev of readTar(Readable.from([tar]))) if (ev.kind === "header") return ev.header;
  return undefined;
}

describe("pax records and numbers", () => {
  it.each([
    ["a length that is not decimal", Buffer.from("x7 a=b\n")],
    ["a length past the end", Buffer.from("99 a=b\n")],
    ["a record not ended by a newline", Buffer.from("6 a=bX")],
    ["a record without '='", Buffer.from("5 ab\n")],
  ])("refuses %s", (_label, body) => {
    expect(() => parsePax(body)).toThrow(/E_UNSAFE_LAYER|pax record/);
  });

  it("reads well-formed records, binary values included", () => {
    const body = Buffer.concat([paxRecord("path", "a/b"), paxRecord("SCHILY.xattr.user.x", Buffer.from([0, 10, 255]))]);
    expect(parsePax(body)).toEqual(
      new Map([
        ["path", Buffer.from("a/b")],
        ["SCHILY.xattr.user.x", Buffer.from([0, 10, 255])],
      ]),
    );
  });

  it.each([
    ["size", "12", { size: 12 }],
    ["uid", "4294967294", { uid: 4294967294 }],
    ["mtime", "1700000000.25", { mtime: 1700000000 }],
    ["mtime", "-5", { mtime: -5 }],
  ])("takes a pax %s of %j", async (key, value, want) => {
    const body = key === "size" ? Buffer.alloc(12, 1) : Buffer.from("data");
    const tar = Buffer.concat([paxHeader([[key, value]]), fileEntry("f", body)]);
    expect(await firstHeader(tar)).toMatchObject(want);
  });
});

describe("the README's table of layer limits", () => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  const l = DEFAULT_LAYER_LIMITS;
  const row = (what: string, value: string) => `| ${what} | ${value} |`;

  it("shows the defaults of agent/store/layer-limits.ts", () => {
    for (const line of [
      row(
        "decompressed bytes",
        `${l.maxRatio} × the blob's size + ${l.ratioAllowanceBytes / MiB} MiB, at most ${l.maxBytes / 1024 / MiB} GiB (a gzip bomb stops there)`,
      ),
      row("entries (files, links, whiteouts, and the directories made for them)", l.maxEntries.toLocaleString("en")),
      row("one extended header (pax, global pax, GNU long name)", `${l.maxExtendedHeaderBytes / 1024} KiB`),
      row("extended headers before one entry", String(l.maxExtendedHeadersPerEntry)),
      row("global pax headers, and the records they hold", `${l.maxGlobalHeaders}, ${l.maxGlobalRecords}`),
    ])
      expect(readme).toContain(line);
    expect(readme).toContain(`(${l.diskReserveBytes / MiB} MiB,\nand ${l.inodeReserve.toLocaleString("en")} inodes)`);
  });
});
