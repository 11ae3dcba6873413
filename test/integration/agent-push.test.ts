/**
 * `fleetctl push-agent`: two bundles (x64 and arm64) pushed to the real
 * registry as one OCI index; a device of either architecture resolves its
 * own bundle from it by digest, with the same code that resolves images.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AGENT_ARTIFACT_TYPE, AGENT_BUNDLE_MEDIA } from "../../agent/registry/agent-push.js";
import { resolveImage } from "../../agent/registry/manifest-resolve.js";
import { parseReference } from "../../agent/registry/reference.js";
import { RegistryClient } from "../../agent/registry/registry-client.js";
import { fleetctl } from "../support/fleetlet-cli.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";

const work = mkdtempSync(join(tmpdir(), "fleetlet-agent-push-"));
let reg: RegistryFixture;
let config: string;

/** A small stand-in for a release bundle: a top-level directory with RELEASE and one file. */
function fakeBundle(version: string, arch: string): string {
  const name = `fleetlet-${version}-linux-${arch}`;
  const dir = join(work, "src", name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "RELEASE"), `version=${version}\narch=${arch}\nnode=24.0.0\n`);
  writeFileSync(join(dir, "payload"), `the ${arch} agent\n`);
  const out = join(work, `${name}.tar.gz`);
  const r = spawnSync("tar", ["-C", join(work, "src"), "-czf", out, name]);
  if (r.status !== 0) throw new Error(`tar: ${r.stderr}`);
  return out;
}

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  config = join(work, "ops.json");
  writeFileSync(config, JSON.stringify({ registries: registriesConfig(reg) }));
}, 60_000);

afterAll(async () => {
  await reg?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe("fleetctl push-agent", () => {
  it("pushes one index with a manifest per architecture, each a single bundle layer a device can resolve", async () => {
    const [x64, arm64] = [fakeBundle("0.9.1", "x64"), fakeBundle("0.9.1", "arm64")];
    const r = fleetctl(["--config", config, "push-agent", x64, arm64, `${reg.host}/fleetlet/agent:0.9.1`]);
    expect(r.status, r.stderr).toBe(0);
    const pinned = r.stdout.trim();
    expect(pinned).toMatch(new RegExp(`^${reg.host}/fleetlet/agent:0\\.9\\.1@sha256:[a-f0-9]{64}$`));
    const digest = pinned.split("@")[1]!;

    const client = new RegistryClient(reg.host, { username: reg.username, password: reg.password, ca: reg.caFile });
    const ref = parseReference(`${reg.host}/fleetlet/agent@${digest}`, "ref");
    for (const [arch, file] of [
      ["amd64", x64],
      ["arm64", arm64],
    ] as const) {
      const resolved = await resolveImage(client, ref, { os: "linux", architecture: arch });
      expect(resolved.index?.digest).toBe(digest);
      expect(JSON.parse(resolved.manifestBytes.toString())).toMatchObject({ artifactType: AGENT_ARTIFACT_TYPE });
      const bytes = readFileSync(file);
      expect(resolved.manifest.layers).toEqual([
        {
          mediaType: AGENT_BUNDLE_MEDIA,
          digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}`,
          size: bytes.length,
        },
      ]);
      expect(resolved.config).toMatchObject({ os: "linux", architecture: arch });
    }
    const index = JSON.parse(
      (await resolveImage(client, ref, { os: "linux", architecture: "amd64" })).index!.bytes.toString(),
    );
    expect(index.manifests.map((m: { platform: unknown }) => m.platform)).toEqual([
      { os: "linux", architecture: "amd64" },
      { os: "linux", architecture: "arm64" },
    ]);
  });

  it("refuses bundles of two versions, or a file that is not a bundle, before pushing anything", () => {
    const mixed = fleetctl([
      "--config",
      config,
      "push-agent",
      fakeBundle("0.9.2", "x64"),
      fakeBundle("0.9.3", "arm64"),
      `${reg.host}/fleetlet/agent:mixed`,
    ]);
    expect(mixed.status).toBe(2);
    expect(mixed.stderr).toMatch(/one version per index \[E_INVALID_ARGUMENT\]/);
    const notBundle = join(work, "not-a-bundle.tar.gz");
    spawnSync("tar", ["-C", work, "-czf", notBundle, "ops.json"]);
    const r = fleetctl(["--config", config, "push-agent", notBundle, `${reg.host}/fleetlet/agent:bad`]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("not a release bundle");
  });
});
