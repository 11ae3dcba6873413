/**
 * The memory a pull holds is bounded, not proportional to the image: a
 * 200 MiB layer of incompressible data is pulled (downloaded, hashed and
 * unpacked as it downloads) by `fleetlet pull` under /usr/bin/time, whose
 * maximum resident set size must stay under Node's own plus the layer's size.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FLEETLET_BIN, fleetctl } from "../support/fleetlet-cli.js";
import { type RegistryFixture, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const MiB = 1024 * 1024;
const LAYER_MIB = 200;
/**
 * Node itself and the pull's fixed buffers (2 MiB steps copied out for the
 * unpack, 256 KiB of staging per connection, a 4 MiB feed, 8 MiB
 * of hashing ahead, zlib, tar), with room for a collector that runs late on a
 * loaded machine; measured at 150 MiB for 50 MiB, 174 for 200 and 196 for 400.
 * Holding the blob whole would put it past 330 MiB.
 */
const RSS_BOUND = 256 * MiB;

let reg: RegistryFixture;
let root: string;
let work: string;
let config: string;

beforeAll(async () => {
  reg = await startRegistry({ auth: "none" });
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-pull-memory-"));
  config = join(work, "config.json");
  writeFileSync(config, JSON.stringify({ registries: { [reg.host]: { ca: reg.caFile } } }));
  const dir = join(work, "image");
  mkdirSync(dir);
  const fd = openSync(join(dir, "payload"), "w");
  for (let i = 0; i < LAYER_MIB; i++) writeSync(fd, randomBytes(MiB));
  closeSync(fd);
  const pushed = fleetctl(["--config", config, "push", dir, `${reg.host}/big/random:1`], { timeoutMs: 300_000 });
  expect(pushed.status, pushed.stderr).toBe(0);
}, 600_000);

afterAll(async () => {
  await cleanupRoot(root);
  await reg.stop();
  rmSync(work, { recursive: true, force: true });
});

describe("a 200 MiB pull", () => {
  it("keeps its peak RSS bounded: the blob is never held whole", () => {
    const r = spawnSync(
      "/usr/bin/time",
      [
        "-f",
        "maxrss_kib=%M",
        process.execPath,
        FLEETLET_BIN,
        "--root",
        root,
        "--config",
        config,
        "pull",
        `${reg.host}/big/random:1`,
      ],
      { encoding: "utf8", timeout: 300_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    const kib = Number(/maxrss_kib=(\d+)/.exec(r.stderr)?.[1]);
    console.log(`peak RSS of a ${LAYER_MIB} MiB pull: ${Math.round(kib / 1024)} MiB`);
    expect(kib * 1024).toBeGreaterThan(0);
    expect(kib * 1024).toBeLessThan(RSS_BOUND);
  }, 300_000);
});
