/**
 * A property of the unpacker, on the real kernel: whatever tar stream it is
 * fed (valid entries mixed with names holding `..` or starting with `/`,
 * symlinks and hard links aimed outside, whiteouts, device nodes, pax and
 * GNU headers with junk in them, cut-short and corrupted archives, some
 * gzipped, some under tight limits), it writes nothing outside its target
 * directory, fails only with a FleetError, and its memory stays bounded.
 *
 * Each case unpacks into a fresh `target/` beside a sentinel file, in a
 * sandbox beside a canary directory; absolute link targets in the pool point
 * at the canary, so a write through one would show there (no system path is
 * in the pool: this runs as root).
 */
import { spawnSync } from "node:child_process";
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FleetError } from "../../agent/errors.js";
import { type UnpackOptions, unpackLayer } from "../../agent/store/layer-unpack.js";
import { loadNative } from "../../agent/system/native.js";
import { END_OF_ARCHIVE, entryHeader, paxHeader, rawHeader } from "../support/hostile-tar.js";

const native = loadNative().core;
const RUNS = 2000;
const MiB = 1024 * 1024;
/** The live heap, after a full collection, may grow this much over the whole run: the unpacker keeps nothing between layers. */
const HEAP_BOUND = 16 * MiB;
/** And the process this much at its peak (the collector runs when it likes; fast-check's values count too). */
const RSS_BOUND = 256 * MiB;

setFlagsFromString("--expose-gc");
const collect = runInNewContext("gc") as () => void;
const liveHeap = () => {
  collect();
  return process.memoryUsage().heapUsed;
};
let base: string;
let canary: string;

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), "fleetlet-property-"));
  expect(spawnSync("mount", ["-t", "tmpfs", "-o", "size=256m", "tmpfs", base]).status).toBe(0);
  canary = join(base, "canary");
  mkdirSync(canary);
  writeFileSync(join(canary, "file"), "canary");
});

afterAll(() => {
  spawnSync("umount", [base]);
  rmSync(base, { recursive: true, force: true });
});

const component = fc.constantFrom(
  "a",
  "b",
  "c",
  ".",
  "..",
  "",
  ".wh.a",
  ".wh..wh..opq",
  ".wh..",
  "lnk",
  "é",
  "n".repeat(260),
);
const name = fc
  .tuple(fc.constantFrom("", "/", "./"), fc.array(component, { minLength: 1, maxLength: 4 }))
  .map(([prefix, parts]) => prefix + parts.join("/"));
const linkTarget = () =>
  fc.constantFrom(
    "a",
    "a/b",
    "lnk/a",
    "../canary",
    "../../canary/file",
    "../sentinel",
    "/",
    "",
    ".",
    canary,
    `${canary}/file`,
  );
const xattr = fc.constantFrom(
  "user.x",
  "security.capability",
  "trusted.overlay.redirect",
  "trusted.overlay.opaque",
  "system.posix_acl_access",
  "security.selinux",
);
const paxKey = fc.constantFrom("path", "linkpath", "size", "uid", "gid", "mtime", "comment", "SCHILY.xattr.user.y");
const paxValue = fc.oneof(
  fc.constantFrom("a", "../x", "/abs", "12", "-1", "1e3", "NaN", "", "99999999999999999999"),
  fc.string(),
);

/** One archive member, as bytes (header, pax records, data). */
const member = fc.oneof(
  fc
    .record({ n: name, body: fc.uint8Array({ maxLength: 700 }), mode: fc.constantFrom(0o644, 0o4755, 0o000) })
    .map(({ n, body, mode }) =>
      Buffer.concat([
        entryHeader({ name: n, type: "file", size: body.length, mode }),
        Buffer.from(body),
        Buffer.alloc((512 - (body.length % 512)) % 512),
      ]),
    ),
  name.map((n) => entryHeader({ name: n, type: "dir" })),
  fc.tuple(name, linkTarget()).map(([n, target]) => entryHeader({ name: n, type: "symlink", linkname: target })),
  fc.tuple(name, linkTarget()).map(([n, target]) => entryHeader({ name: n, type: "hardlink", linkname: target })),
  fc
    .tuple(name, fc.constantFrom("char", "block", "fifo") as fc.Arbitrary<"char" | "block" | "fifo">, fc.nat(3))
    .map(([n, type, dev]) => entryHeader({ name: n, type, devmajor: dev & 1, devminor: dev >> 1 })),
  fc
    .tuple(name, xattr, fc.uint8Array({ maxLength: 24 }))
    .map(([n, x, v]) => entryHeader({ name: n, type: "dir", xattrs: new Map([[x, Buffer.from(v)]]) })),
  fc
    .tuple(fc.array(fc.tuple(paxKey, paxValue), { maxLength: 3 }), fc.constantFrom<"x" | "g">("x", "g"))
    .map(([records, flag]) => paxHeader(records, flag)),
  name.map((n) => {
    const body = Buffer.from(n);
    return Buffer.concat([
      rawHeader({ name: "././@LongLink", flag: "L", size: body.length }),
      body,
      Buffer.alloc(512 - (body.length % 512)),
    ]);
  }),
  fc.uint8Array({ minLength: 512, maxLength: 512 }).map((b) => Buffer.from(b)),
);

/** What happens to the archive's bytes on the way: nothing, a cut, a flipped byte, no end blocks. */
const damage = fc.oneof(
  { weight: 5, arbitrary: fc.constant((b: Buffer) => b) },
  fc.nat().map((at) => (b: Buffer) => b.subarray(0, at % (b.length + 1))),
  fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([at, x]) => (b: Buffer) => {
    const c = Buffer.from(b);
    if (c.length) c[at % c.length]! ^= x;
    return c;
  }),
);

const layer = fc.record({
  members: fc.array(member, { maxLength: 12 }),
  end: fc.boolean(),
  damage,
  gzip: fc.boolean(),
  tight: fc.boolean(), // limits low enough for small archives to meet them
});

/** Everything under `dir`, as "path type size" lines, without following links. */
function listing(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    const st = lstatSync(p);
    const line = `${p} ${st.mode.toString(8)} ${st.size} ${st.nlink}`;
    return st.isDirectory() ? [line, ...listing(p)] : [line];
  });
}

describe("the layer unpacker, on generated tar streams", () => {
  it(`writes nothing outside its target, fails only with FleetError, in bounded memory (${RUNS} streams)`, async () => {
    // Bounds: the live heap grows less than HEAP_BOUND over all the runs, the RSS peak less than RSS_BOUND.
    const outcomes = { ok: 0, refused: new Map<string, number>() };
    const around = listing(base);
    const heap = liveHeap();
    const rss = process.memoryUsage().rss;
    let peak = rss;
    let n = 0;
    await fc.assert(
      fc.asyncProperty(layer, async (l) => {
        const sandbox = join(base, `case-${n++}`);
        const target = join(sandbox, "target");
        mkdirSync(target, { recursive: true });
        writeFileSync(join(sandbox, "sentinel"), "sentinel");
        let bytes = l.damage(Buffer.concat([...l.members, l.end ? END_OF_ARCHIVE : Buffer.alloc(0)]));
        if (l.gzip) bytes = gzipSync(bytes);
        const limits: UnpackOptions["limits"] = l.tight
          ? {
              maxEntries: 6,
              maxExtendedHeaderBytes: 600,
              maxGlobalHeaders: 1,
              maxGlobalRecords: 2,
              maxBytes: 8192,
              ratioAllowanceBytes: 4096,
            }
          : {};
        try {
          await unpackLayer(Readable.from([bytes]), {
            dest: target,
            native,
            mediaType: l.gzip
              ? "application/vnd.oci.image.layer.v1.tar+gzip"
              : "application/vnd.oci.image.layer.v1.tar",
            compressedSize: bytes.length,
            layer: `case-${n}`,
            limits,
          });
          outcomes.ok++;
        } catch (err) {
          if (!(err instanceof FleetError)) throw err;
          outcomes.refused.set(err.code, (outcomes.refused.get(err.code) ?? 0) + 1);
        }
        expect(readdirSync(sandbox).sort()).toEqual(["sentinel", "target"]);
        expect(readFileSync(join(sandbox, "sentinel"), "utf8")).toBe("sentinel");
        expect(lstatSync(join(sandbox, "sentinel")).nlink).toBe(1);
        expect(listing(base).filter((p) => !p.startsWith(`${base}/case-`))).toEqual(around);
        await native.removeTree(sandbox);
        peak = Math.max(peak, process.memoryUsage().rss);
      }),
      { numRuns: RUNS },
    );
    const grown = liveHeap() - heap;
    const refused = [...outcomes.refused].map(([c, k]) => `${c} ${k}`).join(", ");
    process.stdout.write(
      `property: ${RUNS} streams, ${outcomes.ok} unpacked, refused: ${refused}; live heap grew ${(grown / MiB).toFixed(1)} MiB, peak RSS grew ${Math.round((peak - rss) / MiB)} MiB\n`,
    );
    expect(grown).toBeLessThan(HEAP_BOUND);
    expect(peak - rss).toBeLessThan(RSS_BOUND);
    expect(outcomes.ok).toBeGreaterThan(RUNS / 20); // the generator makes valid layers too, not only refusals
  });
});
