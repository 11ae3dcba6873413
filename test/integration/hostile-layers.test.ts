/**
 * Hostile layers against the real kernel, unpacked by the store into a state
 * root that an older fleetlet (or `mkdir`) left 0755: device nodes, a
 * setuid-root program, overlay xattrs, gzip and pax bombs, a million
 * entries. Each is refused with an error that names the layer and the entry
 * or limit (or its xattr dropped with a warning), nothing of it is left in
 * the store, and what a layer may keep (a setuid program) is out of reach of
 * an unprivileged user. The tar bytes are made here, the large ones as
 * streams.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Transform } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FleetError } from "../../agent/errors.js";
import { DEFAULT_LAYER_LIMITS } from "../../agent/store/layer-limits.js";
import { LocalStore } from "../../agent/store/local-store.js";
import { loadNative } from "../../agent/system/native.js";
import {
  buildTar,
  entryHeader,
  fileEntry,
  gzipAll,
  headerStream,
  paxHeader,
  rawHeader,
  zeroFileStream,
} from "../support/hostile-tar.js";

const native = loadNative().core;
const TAR = "application/vnd.oci.image.layer.v1.tar";
const GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";
const MiB = 1024 * 1024;
let work: string;
let root: string;
let store: LocalStore;
/** What the corpus tried, and what became of it. */
const tally = { tried: 0, refused: 0, kept: 0, xattrsDropped: 0 };
const measured: string[] = [];

beforeAll(async () => {
  // A parent everyone may traverse, as /var/lib is, and a root left 0755: an
  // unprivileged user could reach the layers if nothing closed the root.
  work = mkdtempSync(join(tmpdir(), "fleetlet-hostile-"));
  chmodSync(work, 0o755);
  root = join(work, "root");
  mkdirSync(root, 0o755);
  // tmpfs: a million inodes come and go in seconds, and nothing lingers on the disk.
  expect(spawnSync("mount", ["-t", "tmpfs", "-o", "size=1g,mode=0755", "tmpfs", root]).status).toBe(0);
  store = await LocalStore.open(root, native);
});

afterAll(() => {
  spawnSync("umount", [root]);
  rmSync(work, { recursive: true, force: true });
  process.stdout.write(
    `hostile layers: ${tally.tried} tried, ${tally.refused} refused, ${tally.kept} kept, ${tally.xattrsDropped} xattrs dropped; ${measured.join("; ")}\n`,
  );
});

const sha = (s: string | Buffer) => `sha256:${createHash("sha256").update(s).digest("hex")}`;

interface Outcome {
  chainId: string;
  error?: unknown;
  warnings: string[];
}

/** Unpacks one layer into the store, as a pull would once its blob is verified. */
async function unpack(label: string, bytes: Buffer | Readable, opts: { gzip?: boolean; size?: number } = {}) {
  tally.tried++;
  const chainId = sha(`chain ${label}`);
  const diffId = Buffer.isBuffer(bytes) && !opts.gzip ? sha(bytes) : sha(`diff ${label}`);
  const layer = {
    chainId,
    diffId,
    mediaType: opts.gzip ? GZIP : TAR,
    digest: sha(`blob ${label}`),
    size: opts.size ?? (Buffer.isBuffer(bytes) ? bytes.length : 0),
  };
  const warnings: string[] = [];
  const source = Buffer.isBuffer(bytes) ? Readable.from([bytes]) : bytes;
  const out: Outcome = { chainId, warnings };
  try {
    await store.snapshots.unpack(layer, source, { onWarning: (m) => warnings.push(m) });
  } catch (err) {
    out.error = err;
  }
  return out;
}

const layersDir = () => join(root, "layers");
const leftovers = () => readdirSync(layersDir()).filter((n) => n.startsWith("."));

/** Refused with `code`, the message naming the layer and saying `why`; no snapshot, no temp dir left. */
function expectRefused(out: Outcome, code: string, ...why: string[]): void {
  expect(out.error, "the layer was accepted").toBeInstanceOf(FleetError);
  const err = out.error as FleetError;
  expect(err.code, err.message).toBe(code);
  expect(err.message).toMatch(/^layer sha256:[0-9a-f]{64}: /);
  for (const w of why) expect(err.message).toContain(w);
  expect(store.snapshots.has(out.chainId)).toBe(false);
  expect(leftovers()).toEqual([]);
  tally.refused++;
}

/**
 * Runs a command as nobody, with no supplementary groups. Through a shell
 * that is already nobody: setpriv's own exec of the command could still
 * look the path up with root's privileges.
 */
function asNobody(...cmd: string[]) {
  const r = spawnSync(
    "setpriv",
    ["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", 'exec "$@"', "sh", ...cmd],
    { encoding: "utf8" },
  );
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe("device nodes", () => {
  it.each([
    [
      "a block device",
      { name: "dev/sda", type: "block", devmajor: 8, devminor: 0 },
      'entry "dev/sda": block device 8:0',
    ],
    ["/dev/mem", { name: "dev/mem", type: "char", devmajor: 1, devminor: 1 }, 'entry "dev/mem": character device 1:1'],
    ["a 0666 /dev/null", { name: "dev/null", type: "char", devmajor: 1, devminor: 3 }, "character device 1:3"],
  ] as const)("refuses %s", async (label, node, why) => {
    const out = await unpack(label, buildTar([{ ...node, mode: 0o666 }]));
    expectRefused(out, "E_UNSAFE_LAYER", why, "the layer was refused");
  });

  it("keeps a 0/0 character device: the overlay whiteout", async () => {
    const out = await unpack("whiteout", buildTar([{ name: "etc/gone", type: "char", devmajor: 0, devminor: 0 }]));
    expect(out.error).toBeUndefined();
    tally.kept++;
    expect(statSync(join(store.snapshots.path(out.chainId), "etc/gone")).rdev).toBe(0);
  });
});

describe("a setuid-root program", () => {
  it("is kept, and an unprivileged user can neither run it nor look into the layers", async () => {
    const id = readFileSync("/usr/bin/id");
    const out = await unpack(
      "setuid",
      buildTar([{ name: "bin/id", type: "file", mode: 0o4755, uid: 0, gid: 0, body: id }]),
    );
    expect(out.error).toBeUndefined();
    tally.kept++;
    const dir = store.snapshots.path(out.chainId);
    const file = join(dir, "bin/id");
    const st = statSync(file);
    expect([st.mode & 0o7777, st.uid]).toEqual([0o4755, 0]); // kept as the image asked
    const run = asNobody(file, "-u");
    expect(run.out, "a setuid-root program ran for nobody").not.toMatch(/^0$/m);
    expect(run.out).toMatch(/Permission denied/);
    expect(asNobody("/bin/cat", file).out).toMatch(/Permission denied/);
    expect(asNobody("/bin/ls", layersDir()).out).toMatch(/Permission denied/);
    expect(asNobody("/bin/ls", root).status).not.toBe(0);
    for (const d of [root, layersDir()]) expect(statSync(d).mode & 0o7777, d).toBe(0o700);
  });
});

describe("extended attributes", () => {
  it("drops every xattr outside user.* and security.capability, naming the entry and the xattr", async () => {
    const cap = Buffer.from("0100000200200000000000000000000000000000", "hex"); // cap_net_raw+ep
    const acl = Buffer.from(
      "02000000010006000000000002000700e803000004000400ffffffff10000700ffffffff20000400ffffffff",
      "hex",
    );
    const hostile = new Map<string, Buffer>([
      ["trusted.overlay.redirect", Buffer.from("/etc")],
      ["trusted.overlay.metacopy", Buffer.alloc(0)],
      ["user.overlay.origin", Buffer.from("x")],
      ["system.posix_acl_access", acl],
      ["security.selinux", Buffer.from("system_u:object_r:shadow_t:s0")],
    ]);
    const out = await unpack(
      "xattrs",
      buildTar([
        { name: "a/", type: "dir", xattrs: hostile },
        { name: "a/ping", type: "file", body: Buffer.from("ping"), xattrs: new Map([["security.capability", cap]]) },
        { name: "a/note", type: "file", body: Buffer.from("n"), xattrs: new Map([["user.note", Buffer.from("kept")]]) },
        { name: "b/", type: "dir", xattrs: new Map([["trusted.overlay.opaque", Buffer.from("y")]]) },
      ]),
    );
    expect(out.error).toBeUndefined();
    tally.kept++;
    const dir = store.snapshots.path(out.chainId);
    for (const name of hostile.keys()) {
      expect(native.getXattr(join(dir, "a"), name), name).toBeNull();
      expect(out.warnings.join("\n")).toContain(`entry "a/": xattr "${name}" dropped`);
    }
    expect(native.getXattr(join(dir, "b"), "trusted.overlay.opaque")).toBeNull();
    expect(native.getXattr(join(dir, "a/ping"), "security.capability")).toEqual(cap);
    expect(native.getXattr(join(dir, "a/note"), "user.note")).toEqual(Buffer.from("kept"));
    expect(out.warnings.every((w) => w.startsWith("layer sha256:"))).toBe(true);
    tally.xattrsDropped += hostile.size + 1;
  });
});

describe("bombs", () => {
  it("refuses a gzip bomb once it inflates past its cap, before the disk fills", async () => {
    const gz = await gzipAll(zeroFileStream("zeros", 512 * MiB));
    expect(gz.length).toBeLessThan(MiB); // about 500 KiB of gzip for 512 MiB
    const free = statfsSync(root).bavail;
    const out = await unpack("gzip bomb", gz, { gzip: true });
    expectRefused(out, "E_LAYER_LIMIT", "decompresses to more than", `${DEFAULT_LAYER_LIMITS.maxRatio} times its size`);
    expect(statfsSync(root).bavail).toBe(free);
  });

  it("refuses a gzip bomb hidden after the end of the archive", async () => {
    const gz = await gzipAll(zeroFileStream("small", 10, 512 * MiB));
    expectRefused(await unpack("trailing bomb", gz, { gzip: true }), "E_LAYER_LIMIT", "decompresses to more than");
  });

  it.each([
    [
      "a pax header of 64 MiB",
      rawHeader({ name: "PaxHeader", flag: "x", size: 64 * MiB }),
      "an extended header of 67108864 bytes",
    ],
    [
      "a GNU long name of 16 MiB",
      rawHeader({ name: "././@LongLink", flag: "L", size: 16 * MiB }),
      "an extended header of",
    ],
  ])("refuses %s without reading it", async (label, header, why) => {
    expectRefused(await unpack(label, Buffer.concat([header, Buffer.alloc(MiB)])), "E_LAYER_LIMIT", why);
  });

  it("refuses a stream of global pax headers, one holding thousands of records, and pax headers before one entry", async () => {
    const global = headerStream(100_000, (i) =>
      Buffer.concat([paxHeader([[`comment${i}`, "x".repeat(400)]], "g"), entryHeader({ name: `d${i}`, type: "dir" })]),
    );
    expectRefused(await unpack("global pax", global), "E_LAYER_LIMIT", "more than 16 global pax headers");
    const records = Array.from({ length: 20_000 }, (_, i): [string, string] => [`k${i}`, "v"]);
    const wide = Buffer.concat([paxHeader(records, "g"), fileEntry("f", Buffer.from("x"))]);
    expectRefused(await unpack("global records", wide), "E_LAYER_LIMIT", "more than 64 records in global pax headers");
    const chained = headerStream(100_000, () => paxHeader([["path", "a"]]));
    expectRefused(await unpack("pax chain", chained), "E_LAYER_LIMIT", "more than 8 extended headers before one entry");
  });

  it.each([
    ["size", "abc"],
    ["size", "1e9"],
    ["size", "-1"],
    ["size", "0x10"],
    ["size", "99999999999999999999"],
    ["uid", "NaN"],
    ["gid", "4294967296"],
    ["mtime", "soon"],
  ])("refuses a pax %s of %j", async (key, value) => {
    const tar = Buffer.concat([paxHeader([[key, value]]), fileEntry("f", Buffer.from("data"))]);
    expectRefused(await unpack(`pax ${key} ${value}`, tar), "E_UNSAFE_LAYER", `pax ${key} "${value.slice(0, 40)}"`);
  });

  it("refuses a layer of a million entries at the entry cap, streamed, in bounded memory", async () => {
    const generated = { n: 0 };
    let peakRss = 0;
    const watch = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        peakRss = Math.max(peakRss, process.memoryUsage().rss);
        cb(null, chunk);
      },
    });
    // Whiteouts: the cheapest entry for the kernel to make, and counted like any other.
    const stream = headerStream(1_000_000, (i) => {
      generated.n++;
      return entryHeader({ name: `d${i % 1000}/.wh.f${i}`, type: "file" });
    });
    const rss = process.memoryUsage().rss;
    const out = await unpack("a million entries", stream.pipe(watch));
    expectRefused(out, "E_LAYER_LIMIT", `more than ${DEFAULT_LAYER_LIMITS.maxEntries} entries`);
    expect(generated.n).toBeLessThan(DEFAULT_LAYER_LIMITS.maxEntries + 10_000); // the rest was never made
    measured.push(`a million entries: ${generated.n} generated, RSS grew ${Math.round((peakRss - rss) / MiB)} MiB`);
    expect(peakRss - rss, "RSS growth while unpacking").toBeLessThan(256 * MiB);
    expect(statfsSync(root).files - statfsSync(root).ffree).toBeLessThan(1000); // every inode given back
  });

  it("refuses a name the filesystem cannot hold, naming the entry", async () => {
    const long = `${"n".repeat(300)}`;
    const out = await unpack("long name", buildTar([{ name: long, type: "file", body: Buffer.from("x") }]));
    expectRefused(out, "E_UNSAFE_LAYER", `entry "${long}" cannot be written`, "ENAMETOOLONG");
  });
});
