/**
 * From a reference to one image manifest and its config: resolve the tag,
 * pick this platform's entry from an index or manifest list, and check every
 * document against its digest. Sizes are bounded: a registry cannot make a
 * device buffer a huge "manifest".
 */
import { createHash } from "node:crypto";
import { formatIssues } from "../../schemas/format-issues.js";
import {
  type Descriptor,
  type ImageConfig,
  type ImageManifest,
  INDEX_TYPES,
  imageConfig,
  imageIndex,
  imageManifest,
  MANIFEST_TYPES,
  MEDIA,
} from "../../schemas/oci.js";
import { FleetError } from "../errors.js";
import { formatPlatform, type Platform, selectPlatform } from "./platform.js";
import { formatReference, type ImageRef } from "./reference.js";
import { type RegistryClient, repoScope } from "./registry-client.js";

export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024;

export interface ResolvedImage {
  manifestDigest: string;
  manifestMediaType: string;
  manifestBytes: Buffer;
  manifest: ImageManifest;
  configBytes: Buffer;
  config: ImageConfig;
  /** The index the manifest was picked from, when there was one. */
  index?: { digest: string; mediaType: string; bytes: Buffer } | undefined;
}

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch (err) {
    throw new FleetError("E_REGISTRY", `${what} is not valid JSON: ${(err as Error).message}`);
  }
}

async function getManifest(
  client: RegistryClient,
  ref: ImageRef,
  reference: string,
  signal?: AbortSignal,
): Promise<{ digest: string; mediaType: string; bytes: Buffer }> {
  const name = `${client.registry}/${ref.repository}:${reference}`;
  const res = await client.request("GET", `/v2/${ref.repository}/manifests/${reference}`, {
    scope: repoScope(ref.repository, "pull"),
    headers: { accept: [...MANIFEST_TYPES, ...INDEX_TYPES].join(", ") },
    maxBytes: MAX_MANIFEST_BYTES,
    ...(signal ? { signal } : {}),
  });
  if (res.status === 404)
    throw new FleetError(
      "E_MANIFEST_UNKNOWN",
      `${formatReference(ref)}: no such image in the registry (${name} is unknown)`,
    );
  if (res.status !== 200)
    throw new FleetError("E_REGISTRY", `${name}: the registry answered HTTP ${res.status} for the manifest`);
  const digest = sha256(res.body);
  if (reference.startsWith("sha256:") && digest !== reference)
    throw new FleetError("E_DIGEST_MISMATCH", `manifest ${reference}: its content hashes to ${digest}`);
  const announced = res.headers["docker-content-digest"];
  if (typeof announced === "string" && announced.startsWith("sha256:") && announced !== digest) {
    throw new FleetError(
      "E_DIGEST_MISMATCH",
      `${name}: the registry announced ${announced} but the manifest hashes to ${digest}`,
    );
  }
  const bodyType = (parseJson(res.body, `manifest ${name}`) as { mediaType?: string }).mediaType;
  const mediaType =
    (String(res.headers["content-type"] ?? "")
      .split(";")[0]!
      .trim() ||
      bodyType) ??
    "";
  return {
    digest,
    mediaType: [...MANIFEST_TYPES, ...INDEX_TYPES].includes(mediaType) ? mediaType : (bodyType ?? mediaType),
    bytes: res.body,
  };
}

function unsupported(mediaType: string, name: string): FleetError {
  if (mediaType.includes("manifest.v1"))
    return new FleetError(
      "E_UNSUPPORTED",
      `${name}: Docker schema 1 manifests are not supported; push the image again with a current tool`,
    );
  return new FleetError("E_UNSUPPORTED", `${name}: unknown manifest media type "${mediaType}"`);
}

export async function resolveImage(
  client: RegistryClient,
  ref: ImageRef,
  platform: Platform,
  signal?: AbortSignal,
): Promise<ResolvedImage> {
  const name = formatReference(ref);
  let doc = await getManifest(client, ref, ref.digest ?? ref.tag ?? "latest", signal);
  let index: ResolvedImage["index"];
  if (INDEX_TYPES.includes(doc.mediaType)) {
    const parsed = imageIndex.safeParse(parseJson(doc.bytes, `index ${name}`));
    if (!parsed.success) throw new FleetError("E_REGISTRY", `index ${name}: ${formatIssues(parsed.error)}`);
    const entries = parsed.data.manifests;
    const i = selectPlatform(
      entries.map((m) => m.platform),
      platform,
    );
    if (i < 0) {
      const offered = entries.map((m) => (m.platform ? formatPlatform(m.platform) : "unknown")).join(", ");
      throw new FleetError(
        "E_NO_PLATFORM",
        `${name}: no image for ${formatPlatform(platform)} (the index offers ${offered || "nothing"})`,
      );
    }
    index = doc;
    doc = await getManifest(client, ref, entries[i]!.digest, signal);
    if (INDEX_TYPES.includes(doc.mediaType))
      throw new FleetError("E_UNSUPPORTED", `${name}: an index inside an index is not supported`);
  }
  if (!MANIFEST_TYPES.includes(doc.mediaType)) throw unsupported(doc.mediaType, name);
  const parsed = imageManifest.safeParse(parseJson(doc.bytes, `manifest ${name}`));
  if (!parsed.success) throw new FleetError("E_REGISTRY", `manifest ${name}: ${formatIssues(parsed.error)}`);
  const manifest = parsed.data;
  const configBytes = await getConfig(client, ref, manifest.config, signal);
  const config = imageConfig.safeParse(parseJson(configBytes, `config of ${name}`));
  if (!config.success) throw new FleetError("E_REGISTRY", `config of ${name}: ${formatIssues(config.error)}`);
  if (config.data.rootfs.diff_ids.length !== manifest.layers.length) {
    throw new FleetError(
      "E_REGISTRY",
      `${name}: the config lists ${config.data.rootfs.diff_ids.length} layers, the manifest ${manifest.layers.length}`,
    );
  }
  return {
    manifestDigest: doc.digest,
    manifestMediaType: doc.mediaType,
    manifestBytes: doc.bytes,
    manifest,
    configBytes,
    config: config.data,
    index,
  };
}

async function getConfig(
  client: RegistryClient,
  ref: ImageRef,
  desc: Descriptor,
  signal?: AbortSignal,
): Promise<Buffer> {
  if (![MEDIA.ociConfig, MEDIA.dockerConfig].includes(desc.mediaType as never)) {
    throw new FleetError(
      "E_UNSUPPORTED",
      `${formatReference(ref)}: config media type "${desc.mediaType}" is not an image config`,
    );
  }
  if (desc.size > MAX_CONFIG_BYTES)
    throw new FleetError(
      "E_REGISTRY",
      `${formatReference(ref)}: config of ${desc.size} bytes is more than the ${MAX_CONFIG_BYTES} allowed`,
    );
  const res = await client.request("GET", `/v2/${ref.repository}/blobs/${desc.digest}`, {
    scope: repoScope(ref.repository, "pull"),
    maxBytes: MAX_CONFIG_BYTES,
    ...(signal ? { signal } : {}),
  });
  if (res.status !== 200)
    throw new FleetError(
      "E_REGISTRY",
      `${formatReference(ref)}: config blob ${desc.digest} answered HTTP ${res.status}`,
    );
  if (sha256(res.body) !== desc.digest)
    throw new FleetError("E_DIGEST_MISMATCH", `config blob ${desc.digest}: its content hashes to ${sha256(res.body)}`);
  return res.body;
}
