/**
 * A layer unpacked while it downloads is named (renamed to layers/<chain
 * id>) only once its blob is committed. A gzip stream ends at its last
 * member, and whatever follows a 0 byte after it is ignored by the
 * decompressor: a blob that is a valid gzip of the right tar followed by
 * "\0" and other bytes has its tar, and its diff id, complete long before
 * its last byte. Served with those other bytes changed, so that the blob
 * does not match its digest, the pull must fail and leave no snapshot.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FleetError } from "../../agent/errors.js";
import { pullImage, storePullDeps } from "../../agent/registry/pull.js";
import { LocalStore } from "../../agent/store/local-store.js";
import { chainIds } from "../../agent/store/snapshots.js";
import { buildTar } from "../../agent/store/tar-writer.js";
import { loadNative } from "../../agent/system/native.js";
import { MEDIA } from "../../schemas/oci.js";
import { HostileServers } from "../support/hostile-server.js";
import { makeTls, type TlsFiles } from "../support/registry.js";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
let work: string;
let tls: TlsFiles;
let servers: HostileServers;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-follow-gate-"));
  tls = await makeTls(work);
  servers = new HostileServers(tls);
});

afterAll(() => {
  servers.close();
  rmSync(work, { recursive: true, force: true });
});

describe("a layer whose tar is whole before its blob is", () => {
  /** Serves the image, its layer's bytes after the gzip changed at the end when `corrupt`; pulls it into a fresh root. */
  async function pullServed(name: string, corrupt: boolean) {
    const tar = buildTar([{ name: "hello", type: "file", mode: 0o644, body: Buffer.from("hello\n") }]);
    const gz = gzipSync(tar);
    // Far more than the unpack's feed holds (4 MiB): the download must go on once the unpack stops reading.
    const tail = randomBytes(16 << 20);
    tail[0] = 0; // the decompressor stops here
    const layer = Buffer.concat([gz, tail]);
    const served = Buffer.from(layer);
    if (corrupt) served[served.length - 1] = served[served.length - 1]! ^ 0xff;
    const diffId = sha256(tar);
    const config = Buffer.from(
      JSON.stringify({
        architecture: "amd64",
        os: "linux",
        rootfs: { type: "layers", diff_ids: [diffId] },
        config: {},
      }),
    );
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: MEDIA.ociConfig, digest: sha256(config), size: config.length },
        layers: [{ mediaType: MEDIA.ociLayerGzip, digest: sha256(layer), size: layer.length }],
      }),
    );
    const s = await servers.serve(true, (req, res) => {
      if (req.url?.includes("/manifests/"))
        return void res.writeHead(200, { "content-type": MEDIA.ociManifest }).end(manifest);
      if (req.url?.endsWith(sha256(config))) return void res.writeHead(200).end(config);
      // The layer: the gzip and the first MiB after it, then, a second later, the rest.
      res.writeHead(200, { "content-length": String(served.length) });
      res.write(served.subarray(0, gz.length + (1 << 20)));
      void sleep(1000).then(() => res.end(served.subarray(gz.length + (1 << 20))));
    });
    const root = join(work, name);
    mkdirSync(root, 0o700);
    const store = await LocalStore.open(root, loadNative().core);
    const deps = storePullDeps(store, { [s.host]: { ca: tls.caCert } });
    const platform = { os: "linux", architecture: "amd64" };
    const outcome = await pullImage(`${s.host}/gate/image:1`, deps, { platform }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const named = readdirSync(join(root, "layers")).filter((n) => !n.startsWith("."));
    return { outcome, store, chain: chainIds([diffId])[0]!, layer: sha256(layer), named };
  }

  it("is not named when the blob then fails its digest", async () => {
    const { outcome, store, chain, layer, named } = await pullServed("corrupt", true);
    expect(outcome).toBeInstanceOf(FleetError);
    expect((outcome as FleetError).code).toBe("E_DIGEST_MISMATCH");
    expect(store.snapshots.has(chain)).toBe(false);
    expect(named).toEqual([]);
    expect(store.content.has(layer)).toBe(false);
  });

  it("is named once the blob is committed when it is whole", async () => {
    const { outcome, store, chain, layer, named } = await pullServed("whole", false);
    expect(outcome).toBeUndefined();
    expect(store.snapshots.has(chain)).toBe(true);
    expect(named).toEqual([chain.slice(7)]);
    expect(store.content.has(layer)).toBe(true);
  });
});
