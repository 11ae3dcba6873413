/**
 * A layer whose blob is small but which unpacks to more than the disk has
 * room for. The pull's first check passes, since it knows only compressed
 * sizes; the unpack must then keep the free-space reserve as it writes, and
 * stop with E_NO_SPACE, leaving no half-made snapshot.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, rmSync, statfsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LAYER_LIMITS } from "../../agent/store/layer-limits.js";
import { fleetctl, runCli } from "../support/fleetlet-cli.js";
import { END_OF_ARCHIVE, entryHeader, padding } from "../support/hostile-tar.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";

const MiB = 1024 * 1024;
const LAYER_BYTES = 200 * MiB;
let reg: RegistryFixture;
let work: string;
let config: string;
let ref: string;

/** One file of a 16 KiB random block over and over: gzip shrinks it about a hundred times. */
async function writeCompressibleTar(path: string): Promise<void> {
  const block = randomBytes(16 * 1024);
  function* generate(): Generator<Buffer> {
    yield entryHeader({ name: "big", type: "file", size: LAYER_BYTES });
    for (let left = LAYER_BYTES; left > 0; left -= block.length) yield block;
    yield padding(LAYER_BYTES);
    yield END_OF_ARCHIVE;
  }
  await pipeline(generate(), createWriteStream(path));
}

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  work = mkdtempSync(join(tmpdir(), "fleetlet-reserve-"));
  config = join(work, "config.json");
  const registries = registriesConfig(reg);
  await pipeline([JSON.stringify({ registries })], createWriteStream(config));
  const tar = join(work, "big.tar");
  await writeCompressibleTar(tar);
  ref = `${reg.host}/reserve/big:1`;
  const pushed = fleetctl(["--config", config, "push", tar, ref]);
  expect(pushed.status, pushed.stderr).toBe(0);
  rmSync(tar);
});

afterAll(async () => {
  await reg?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe("the disk reserve while a layer unpacks", () => {
  it("stops the unpack before the free space falls under the reserve, and leaves nothing half-made", async () => {
    const root = join(work, "small");
    mkdirSync(root);
    // 160 MiB: room for the blob and the first check, not for 200 MiB unpacked.
    expect(spawnSync("mount", ["-t", "tmpfs", "-o", "size=160m", "tmpfs", root]).status).toBe(0);
    try {
      const free = () => {
        const st = statfsSync(root);
        return st.bavail * st.bsize;
      };
      let minFree = free();
      const watch = setInterval(() => {
        minFree = Math.min(minFree, free());
      }, 2);
      const r = await runCli("fleetlet", ["--root", root, "--config", config, "pull", ref]);
      clearInterval(watch);
      expect(r.status, r.stderr).not.toBe(0);
      expect(r.stderr).toMatch(
        /layer sha256:[0-9a-f]{64}: not enough disk space in .*small: unpacking stopped after \d+ MiB with \d+ MiB free \(64 MiB is kept free\); the layer was refused \[E_NO_SPACE\]/,
      );
      const reserve = DEFAULT_LAYER_LIMITS.diskReserveBytes;
      expect(
        minFree,
        `the least free space seen while pulling, ${Math.floor(minFree / MiB)} MiB`,
      ).toBeGreaterThanOrEqual(reserve);
      expect(readdirSync(join(root, "layers"))).toEqual([]);
      expect(free()).toBeGreaterThan(150 * MiB); // the half-made snapshot is gone (the verified blob stays)
    } finally {
      spawnSync("umount", [root]);
    }
  });
});
