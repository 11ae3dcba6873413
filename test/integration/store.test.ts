/** The store on the real filesystem: file properties after unpack, disk space, cancellation. */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pullImage, storePullDeps } from "../../agent/registry/pull.js";
import { pushImage } from "../../agent/registry/push.js";
import { unpackLayer } from "../../agent/store/layer-unpack.js";
import { LocalStore } from "../../agent/store/local-store.js";
import { buildTar } from "../../agent/store/tar-writer.js";
import { loadNative } from "../../agent/system/native.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";

const native = loadNative().core;
let work: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-store-"));
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

describe("layer unpack", () => {
  it("keeps ownership, modes with setuid, hard links, symlinks, mtimes, whiteouts and file capabilities", async () => {
    const cap = Buffer.from("0100000200200000000000000000000000000000", "hex"); // cap_net_raw+ep
    const tar = buildTar([
      { name: "bin/", type: "dir", mode: 0o755, mtime: 1_000_000 },
      { name: "bin/su", type: "file", mode: 0o4755, uid: 0, gid: 0, body: Buffer.from("suid"), mtime: 1_234_567 },
      {
        name: "bin/ping",
        type: "file",
        mode: 0o755,
        body: Buffer.from("ping"),
        xattrs: new Map([["security.capability", cap]]),
      },
      { name: "bin/su2", type: "hardlink", linkname: "bin/su" },
      { name: "home/app/", type: "dir", mode: 0o700, uid: 1000, gid: 1000 },
      { name: "home/app/data", type: "file", mode: 0o640, uid: 1000, gid: 1000, body: Buffer.from("mine") },
      { name: "etc/localtime", type: "symlink", linkname: "/usr/share/zoneinfo/UTC" },
      { name: "etc/gone", type: "char", devmajor: 0, devminor: 0, mode: 0o600 }, // an overlay whiteout
      { name: "run/fifo", type: "fifo", mode: 0o600 },
    ]);
    const dest = join(work, "props");
    mkdirSync(dest);
    const r = await unpackLayer(Readable.from([tar]), {
      dest,
      mediaType: "application/vnd.oci.image.layer.v1.tar",
      native,
    });
    expect(r.entries).toBe(9);
    const su = statSync(join(dest, "bin/su"));
    expect(su.mode & 0o7777).toBe(0o4755);
    expect(su.mtimeMs).toBe(1_234_567_000);
    expect(statSync(join(dest, "bin/su2")).ino).toBe(su.ino);
    expect(su.nlink).toBe(2);
    expect(native.getXattr(join(dest, "bin/ping"), "security.capability")).toEqual(cap);
    const data = statSync(join(dest, "home/app/data"));
    expect([data.uid, data.gid, data.mode & 0o777]).toEqual([1000, 1000, 0o640]);
    expect(statSync(join(dest, "home/app")).mode & 0o777).toBe(0o700);
    expect(readlinkSync(join(dest, "etc/localtime"))).toBe("/usr/share/zoneinfo/UTC");
    const gone = lstatSync(join(dest, "etc/gone"));
    expect([gone.isCharacterDevice(), gone.rdev]).toEqual([true, 0]);
    expect(lstatSync(join(dest, "run/fifo")).isFIFO()).toBe(true);
    expect(statSync(join(dest, "bin")).mtimeMs).toBe(1_000_000_000);
  });

  it("unpacks what GNU tar packs to the same tree and diff id", async () => {
    const src = join(work, "gnu-src");
    mkdirSync(join(src, "a/b"), { recursive: true });
    writeFileSync(join(src, "a/b/file"), randomBytes(100_000));
    execFileSync("ln", ["-s", "b/file", join(src, "a/link")]);
    const tgz = join(work, "gnu.tar.gz");
    execFileSync("tar", ["-C", src, "-czf", tgz, "."]);
    const dest = join(work, "gnu-dest");
    mkdirSync(dest);
    const r = await unpackLayer(Readable.from([readFileSync(tgz)]), {
      dest,
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      native,
    });
    const expected = `sha256:${
      execFileSync("sh", ["-c", `gzip -dc ${tgz} | sha256sum`])
        .toString()
        .split(" ")[0]
    }`;
    expect(r.diffId).toBe(expected);
    expect(readFileSync(join(dest, "a/b/file"))).toEqual(readFileSync(join(src, "a/b/file")));
    expect(readlinkSync(join(dest, "a/link"))).toBe("b/file");
  });
});

describe("pulls and the device's resources", () => {
  let reg: RegistryFixture;
  let registries: Record<string, { username: string; password: string; ca: string }>;
  let ref: string;
  beforeAll(async () => {
    reg = await startRegistry({ auth: "htpasswd" });
    registries = registriesConfig(reg);
    const dir = join(work, "img");
    mkdirSync(dir);
    writeFileSync(join(dir, "blob.bin"), randomBytes(24 * 1024 * 1024));
    ref = `${reg.host}/store/big:1`;
    await pushImage(dir, ref, { registries });
  });
  afterAll(async () => {
    await reg.stop();
  });

  async function storeAt(root: string) {
    const store = await LocalStore.open(root, native);
    return { store, deps: storePullDeps(store, registries) };
  }

  it("refuses a pull that would fill the disk, before downloading anything", async () => {
    const small = join(work, "small-fs");
    mkdirSync(small);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=40m", "tmpfs", small]);
    try {
      const { deps } = await storeAt(small);
      await expect(pullImage(ref, deps)).rejects.toThrow(
        /not enough disk space in .*small-fs: the pull needs about \d+ MiB/,
      );
      expect(readdirSync(join(small, "ingest"))).toEqual([]);
    } finally {
      execFileSync("umount", [small]);
    }
  });

  it("cancels cleanly through an AbortSignal, leaving a partial that the next pull resumes", async () => {
    const root = join(work, "abort-root");
    const { store, deps } = await storeAt(root);
    const abort = new AbortController();
    let seen = 0;
    const pulling = pullImage(ref, deps, {
      maxRateBytesPerSec: 8 * 1024 * 1024,
      signal: abort.signal,
      onEvent: (e) => {
        if (e.type !== "progress") return;
        seen = e.done;
        if (seen > 4 * 1024 * 1024) abort.abort();
      },
    });
    await expect(pulling).rejects.toThrow(/cancelled|aborted/i);
    const partials = store.content.partials();
    expect(partials.length).toBe(1);
    const kept = statSync(partials[0]![1]).size;
    expect(kept).toBeGreaterThan(2 * 1024 * 1024);
    let fetched = 0;
    const image = await pullImage(ref, deps, {
      onEvent: (e) => {
        if (e.type === "done") fetched = e.fetchedBytes;
      },
    });
    expect(image.layers.length).toBe(1);
    expect(existsSync(store.snapshots.path(image.layers[0]!.chainId))).toBe(true);
    expect(seen).toBeGreaterThan(0);
    // fetchedBytes counts the resumed partial too; what came over the wire was the rest.
    expect(fetched).toBeGreaterThanOrEqual(image.layers[0]!.size);
  });
});
