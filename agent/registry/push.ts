/**
 * `fleetctl push DIR|TAR REF`: builds a one-layer image from a root
 * filesystem (tar and gzip of a directory, or a tar as it is) with a config
 * carrying the diff id, and pushes it: each blob is HEADed first and skipped
 * when present, mounted from another repository when fleetctl pushed it
 * there before, else uploaded (one PUT when small, chunked PATCHes when
 * large); the manifest goes last.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, type Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip } from "node:zlib";
import { MEDIA } from "../../schemas/oci.js";
import { FleetError } from "../errors.js";
import { packDirectory } from "../store/tar-writer.js";
import { resolveImage } from "./manifest-resolve.js";
import { formatPlatform, hostPlatform, type Platform } from "./platform.js";
import { formatReference, parseReference } from "./reference.js";
import { type RegistryAuthConfig, RegistryClient, repoScope } from "./registry-client.js";

export interface PushOptions {
  registries: Record<string, RegistryAuthConfig>;
  cmd?: string[] | undefined;
  entrypoint?: string[] | undefined;
  env?: string[] | undefined;
  workingDir?: string | undefined;
  platform?: Platform | undefined;
  /** Repositories of the same registry that may already hold the layer. */
  mountFrom?: string[] | undefined;
  /** An image of the same registry to build on: its layers go below the new one. */
  base?: string | undefined;
  onEvent?: (e: {
    type: "layer-built" | "blob-present" | "blob-mounted" | "blob-uploaded";
    digest: string;
    size: number;
  }) => void;
}

export interface PushResult {
  ref: string;
  digest: string;
  layer: { digest: string; diffId: string; size: number };
}

/** Bytes above which a blob goes up in chunks. */
export const CHUNK_BYTES = 16 * 1024 * 1024;

function hashingStream(hash: ReturnType<typeof createHash>, count: { n: number }): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      count.n += chunk.length;
      cb(null, chunk);
    },
  });
}

/** Writes the layer as tar+gzip into `out`, returning its digest, size and diff id. */
async function buildLayer(source: string, out: string): Promise<{ digest: string; diffId: string; size: number }> {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(source);
  } catch (err) {
    throw new FleetError(
      "E_NOT_FOUND",
      `push: ${source}: ${(err as NodeJS.ErrnoException).code === "ENOENT" ? "no such file or directory" : (err as Error).message}`,
      { exitCode: 2 },
    );
  }
  const diff = createHash("sha256");
  const blob = createHash("sha256");
  const sizes = { n: 0 };
  const uncompressed = { n: 0 };
  let tar: Readable;
  if (st.isDirectory()) tar = packDirectory(source);
  else {
    const head = readFileSync(source).subarray(0, 2);
    const raw = createReadStream(source);
    tar = head[0] === 0x1f && head[1] === 0x8b ? raw.pipe(createGunzip()) : raw;
  }
  await pipeline(
    tar,
    hashingStream(diff, uncompressed),
    createGzip({ level: 6 }),
    hashingStream(blob, sizes),
    createWriteStream(out),
  );
  return { digest: `sha256:${blob.digest("hex")}`, diffId: `sha256:${diff.digest("hex")}`, size: sizes.n };
}

async function blobPresent(client: RegistryClient, repo: string, digest: string): Promise<boolean> {
  const res = await client.request("HEAD", `/v2/${repo}/blobs/${digest}`, { scope: repoScope(repo, "pull,push") });
  return res.status === 200;
}

async function tryMount(client: RegistryClient, repo: string, digest: string, from: string): Promise<boolean> {
  const res = await client.request(
    "POST",
    `/v2/${repo}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
    {
      scope: `${repoScope(repo, "pull,push")} ${repoScope(from, "pull")}`,
    },
  );
  if (res.status === 201) return true;
  if (res.status === 202 && res.headers.location) {
    // Not mountable: the registry opened an upload instead; cancel it.
    await client.request("DELETE", String(res.headers.location), { scope: repoScope(repo, "pull,push") });
  }
  return false;
}

async function upload(
  client: RegistryClient,
  repo: string,
  digest: string,
  size: number,
  open: (start: number, end: number) => Readable,
): Promise<void> {
  const scope = repoScope(repo, "pull,push");
  const started = await client.request("POST", `/v2/${repo}/blobs/uploads/`, { scope });
  if (started.status !== 202 || !started.headers.location)
    throw new FleetError(
      "E_REGISTRY",
      `${client.registry}/${repo}: starting an upload answered HTTP ${started.status}`,
    );
  let location = new URL(String(started.headers.location), client.origin);
  if (size > CHUNK_BYTES) {
    for (let start = 0; start < size; start += CHUNK_BYTES) {
      const end = Math.min(size, start + CHUNK_BYTES) - 1;
      const res = await client.request("PATCH", location.pathname + location.search, {
        scope,
        headers: {
          "content-type": "application/octet-stream",
          "content-range": `${start}-${end}`,
          "content-length": String(end - start + 1),
        },
        body: () => open(start, end),
      });
      if (res.status !== 202 || !res.headers.location)
        throw new FleetError(
          "E_REGISTRY",
          `${client.registry}/${repo}: uploading bytes ${start}-${end} of ${digest} answered HTTP ${res.status}`,
        );
      location = new URL(String(res.headers.location), client.origin);
    }
    location.searchParams.set("digest", digest);
    const done = await client.request("PUT", location.pathname + location.search, {
      scope,
      headers: { "content-length": "0" },
    });
    if (done.status !== 201)
      throw new FleetError(
        "E_REGISTRY",
        `${client.registry}/${repo}: completing the upload of ${digest} answered HTTP ${done.status}`,
      );
    return;
  }
  location.searchParams.set("digest", digest);
  const res = await client.request("PUT", location.pathname + location.search, {
    scope,
    headers: { "content-type": "application/octet-stream", "content-length": String(size) },
    body: () => open(0, size - 1),
  });
  if (res.status !== 201)
    throw new FleetError("E_REGISTRY", `${client.registry}/${repo}: uploading ${digest} answered HTTP ${res.status}`);
}

async function baseImage(
  name: string,
  registry: string,
  registries: Record<string, RegistryAuthConfig>,
  platform: Platform,
) {
  const ref = parseReference(name, "--base");
  if (ref.registry !== registry)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `--base ${name}: the base must be in the same registry (${registry}) so its layers can be mounted`,
      { exitCode: 2 },
    );
  const resolved = await resolveImage(new RegistryClient(registry, registries[registry] ?? {}), ref, platform);
  return { repository: ref.repository, manifest: resolved.manifest, config: resolved.config };
}

export async function pushImage(source: string, refText: string, opts: PushOptions): Promise<PushResult> {
  const ref = parseReference(refText, "push reference");
  if (ref.digest)
    throw new FleetError("E_INVALID_ARGUMENT", `push reference "${refText}": push to a tag, not a digest`, {
      exitCode: 2,
    });
  const client = new RegistryClient(ref.registry, opts.registries[ref.registry] ?? {});
  const work = mkdtempSync(join(tmpdir(), "fleetctl-push-"));
  try {
    const layerPath = join(work, "layer.tar.gz");
    const layer = await buildLayer(source, layerPath);
    opts.onEvent?.({ type: "layer-built", digest: layer.digest, size: layer.size });
    const platform = opts.platform ?? hostPlatform();
    const base = opts.base ? await baseImage(opts.base, ref.registry, opts.registries, platform) : undefined;
    const baseConfig = base?.config.config ?? {};
    const config = Buffer.from(
      JSON.stringify({
        created: new Date(0).toISOString(),
        architecture: platform.architecture,
        os: platform.os,
        ...(platform.variant ? { variant: platform.variant } : {}),
        config: {
          Env: opts.env?.length
            ? opts.env
            : (baseConfig.Env ?? ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
          ...((opts.entrypoint ?? baseConfig.Entrypoint)
            ? { Entrypoint: opts.entrypoint ?? baseConfig.Entrypoint }
            : {}),
          ...((opts.cmd ?? baseConfig.Cmd) ? { Cmd: opts.cmd ?? baseConfig.Cmd } : {}),
          ...((opts.workingDir ?? baseConfig.WorkingDir)
            ? { WorkingDir: opts.workingDir ?? baseConfig.WorkingDir }
            : {}),
        },
        rootfs: { type: "layers", diff_ids: [...(base?.config.rootfs.diff_ids ?? []), layer.diffId] },
        history: [{ created: new Date(0).toISOString(), created_by: `fleetctl push ${formatPlatform(platform)}` }],
      }),
    );
    const configDigest = `sha256:${createHash("sha256").update(config).digest("hex")}`;
    const blobs = [
      {
        digest: layer.digest,
        size: layer.size,
        open: (s: number, e: number) => createReadStream(layerPath, { start: s, end: e }),
      },
      {
        digest: configDigest,
        size: config.length,
        open: (s: number, e: number) => new PassThrough().end(config.subarray(s, e + 1)),
      },
    ];
    const mountFrom = [...(base ? [base.repository] : []), ...(opts.mountFrom ?? [])];
    for (const l of base?.manifest.layers ?? []) {
      blobs.unshift({
        digest: l.digest,
        size: l.size,
        open: () => {
          throw new FleetError(
            "E_REGISTRY",
            `base layer ${l.digest} is neither in ${ref.repository} nor mountable from ${base!.repository}`,
          );
        },
      });
    }
    for (const b of blobs) {
      if (await blobPresent(client, ref.repository, b.digest)) {
        opts.onEvent?.({ type: "blob-present", digest: b.digest, size: b.size });
        continue;
      }
      let mounted = false;
      for (const from of mountFrom.filter((r) => r !== ref.repository)) {
        mounted = await tryMount(client, ref.repository, b.digest, from);
        if (mounted) break;
      }
      if (mounted) {
        opts.onEvent?.({ type: "blob-mounted", digest: b.digest, size: b.size });
        continue;
      }
      await upload(client, ref.repository, b.digest, b.size, b.open);
      opts.onEvent?.({ type: "blob-uploaded", digest: b.digest, size: b.size });
    }
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: config.length },
        layers: [
          ...(base?.manifest.layers ?? []),
          { mediaType: MEDIA.ociLayerGzip, digest: layer.digest, size: layer.size },
        ],
      }),
    );
    const res = await client.request("PUT", `/v2/${ref.repository}/manifests/${ref.tag}`, {
      scope: repoScope(ref.repository, "pull,push"),
      headers: { "content-type": MEDIA.ociManifest },
      body: manifest,
    });
    if (res.status !== 201)
      throw new FleetError(
        "E_REGISTRY",
        `${formatReference(ref)}: putting the manifest answered HTTP ${res.status}: ${res.body.toString("utf8").slice(0, 300)}`,
      );
    return {
      ref: formatReference(ref),
      digest: `sha256:${createHash("sha256").update(manifest).digest("hex")}`,
      layer,
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
