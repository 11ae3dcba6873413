/**
 * `fleetctl push DIR|TAR REF`: builds a one-layer image from a root
 * filesystem (tar and gzip of a directory, or a tar as it is) with a config
 * carrying the diff id, and pushes it: each blob is HEADed first and skipped
 * when present, mounted from another repository when fleetctl pushed it
 * there before, else uploaded (blob-upload.ts); the manifest goes last.
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  createReadStream,
  createWriteStream,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, type Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip, createZstdCompress, createZstdDecompress } from "node:zlib";
import { type Descriptor, MEDIA } from "../../schemas/oci.js";
import { FleetError } from "../errors.js";
import { sha256Digest } from "../store/digest.js";
import { packDirectory } from "../store/tar-writer.js";
import { type BlobSource, pushBlob } from "./blob-upload.js";
import { resolveImage } from "./manifest-resolve.js";
import { formatPlatform, hostPlatform, type Platform } from "./platform.js";
import { formatReference, type ImageRef, parseReference } from "./reference.js";
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
  /** How the new layer is compressed (default gzip). */
  compression?: LayerCompressionChoice | undefined;
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

function hashingStream(hash: ReturnType<typeof createHash>, count: { n: number }): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      count.n += chunk.length;
      cb(null, chunk);
    },
  });
}

export type LayerCompressionChoice = "gzip" | "zstd";

/** The tar of a source file as it is: plain, gzip or zstd (by its magic bytes). */
function tarOf(source: string): Readable {
  const head = Buffer.alloc(4);
  const fd = openSync(source, "r");
  try {
    readSync(fd, head, 0, 4, 0);
  } finally {
    closeSync(fd);
  }
  const raw = createReadStream(source);
  if (head[0] === 0x1f && head[1] === 0x8b) return raw.pipe(createGunzip());
  if (head.readUInt32LE(0) === 0xfd2fb528) return raw.pipe(createZstdDecompress());
  return raw;
}

/** Writes the layer as tar+gzip (or tar+zstd) into `out`, returning its digest, size and diff id. */
async function buildLayer(
  source: string,
  out: string,
  compression: LayerCompressionChoice,
): Promise<{ digest: string; diffId: string; size: number }> {
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
  else tar = tarOf(source);
  await pipeline(
    tar,
    hashingStream(diff, uncompressed),
    compression === "zstd" ? createZstdCompress() : createGzip({ level: 6 }),
    hashingStream(blob, sizes),
    createWriteStream(out),
  );
  return { digest: `sha256:${blob.digest("hex")}`, diffId: `sha256:${diff.digest("hex")}`, size: sizes.n };
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
  const client = new RegistryClient(registry, registries[registry] ?? {});
  const resolved = await resolveImage(client, ref, platform).finally(() => client.close());
  return { repository: ref.repository, manifest: resolved.manifest, config: resolved.config };
}

type BaseImage = Awaited<ReturnType<typeof baseImage>>;

/** The image config: the platform, the process settings (given, else the base's), and the base's diff ids plus the new one. */
function imageConfig(platform: Platform, diffId: string, base: BaseImage | undefined, opts: PushOptions): Buffer {
  const baseConfig = base?.config.config ?? {};
  return Buffer.from(
    JSON.stringify({
      created: new Date(0).toISOString(),
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: {
        Env: opts.env?.length
          ? opts.env
          : (baseConfig.Env ?? ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
        ...((opts.entrypoint ?? baseConfig.Entrypoint) ? { Entrypoint: opts.entrypoint ?? baseConfig.Entrypoint } : {}),
        ...((opts.cmd ?? baseConfig.Cmd) ? { Cmd: opts.cmd ?? baseConfig.Cmd } : {}),
        ...((opts.workingDir ?? baseConfig.WorkingDir) ? { WorkingDir: opts.workingDir ?? baseConfig.WorkingDir } : {}),
      },
      rootfs: { type: "layers", diff_ids: [...(base?.config.rootfs.diff_ids ?? []), diffId] },
      history: [{ created: new Date(0).toISOString(), created_by: `fleetctl push ${formatPlatform(platform)}` }],
    }),
  );
}

/**
 * The blobs the manifest names: the base's layers (which can only be
 * present or mounted, never uploaded from here), the new layer from its file
 * and the config from memory.
 */
function imageBlobs(
  repository: string,
  layer: { path: string; digest: string; size: number },
  config: { digest: string; bytes: Buffer },
  base: BaseImage | undefined,
): BlobSource[] {
  const blobs: BlobSource[] = [
    {
      digest: layer.digest,
      size: layer.size,
      open: (s, e) => createReadStream(layer.path, { start: s, end: e }),
    },
    {
      digest: config.digest,
      size: config.bytes.length,
      open: (s, e) => new PassThrough().end(config.bytes.subarray(s, e + 1)),
    },
  ];
  for (const l of base?.manifest.layers ?? []) {
    blobs.unshift({
      digest: l.digest,
      size: l.size,
      open: () => {
        throw new FleetError(
          "E_REGISTRY",
          `base layer ${l.digest} is neither in ${repository} nor mountable from ${base!.repository}`,
        );
      },
    });
  }
  return blobs;
}

/** PUTs the manifest under the reference's tag; returns its digest. */
async function putManifest(
  client: RegistryClient,
  ref: ImageRef,
  layers: Descriptor[],
  config: { digest: string; bytes: Buffer },
): Promise<string> {
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: MEDIA.ociConfig, digest: config.digest, size: config.bytes.length },
      layers,
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
  return sha256Digest(manifest);
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
    const compression = opts.compression ?? "gzip";
    const layer = await buildLayer(source, layerPath, compression);
    opts.onEvent?.({ type: "layer-built", digest: layer.digest, size: layer.size });
    const platform = opts.platform ?? hostPlatform();
    const base = opts.base ? await baseImage(opts.base, ref.registry, opts.registries, platform) : undefined;
    const bytes = imageConfig(platform, layer.diffId, base, opts);
    const config = { digest: sha256Digest(bytes), bytes };
    const mountFrom = [...(base ? [base.repository] : []), ...(opts.mountFrom ?? [])];
    for (const b of imageBlobs(ref.repository, { path: layerPath, ...layer }, config, base)) {
      const outcome = await pushBlob(client, ref.repository, b, mountFrom);
      opts.onEvent?.({ type: outcome, digest: b.digest, size: b.size });
    }
    const layers = [
      ...(base?.manifest.layers ?? []),
      {
        mediaType: compression === "zstd" ? MEDIA.ociLayerZstd : MEDIA.ociLayerGzip,
        digest: layer.digest,
        size: layer.size,
      },
    ];
    const digest = await putManifest(client, ref, layers, config);
    return { ref: formatReference(ref), digest, layer };
  } finally {
    client.close();
    rmSync(work, { recursive: true, force: true });
  }
}
