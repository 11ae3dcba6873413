/**
 * `fleetctl push-agent BUNDLE… REF`: pushes release bundles (npm run dist)
 * as one OCI index, one manifest per architecture. Each manifest's single
 * layer is the bundle's .tar.gz as it is (AGENT_BUNDLE_MEDIA); its config is
 * a plain image config (os, architecture, the bundle's diff id), so a device
 * resolves the index with the same code as any image; `artifactType` and an
 * annotation say it is a fleetlet agent and which version. The blobs go up
 * through blob-upload.ts, the manifests by digest, the index under REF's tag.
 */
import { createHash } from "node:crypto";
import { createReadStream, statSync } from "node:fs";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { AGENT_BUNDLE_MEDIA, MEDIA } from "../../schemas/oci.js";
import { FleetError } from "../errors.js";
import { sha256Digest } from "../store/digest.js";
import { readTar } from "../store/tar-reader.js";
import { pushBlob } from "./blob-upload.js";
import { formatReference, type ImageRef, parseReference } from "./reference.js";
import { type RegistryAuthConfig, RegistryClient, repoScope } from "./registry-client.js";

/** The artifact type of an agent bundle's manifest. */
export const AGENT_ARTIFACT_TYPE = "application/vnd.fleetlet.agent.v1";
/** The media type of its one layer, in schemas/ so that the agent's updater checks it without loading this pusher. */
export { AGENT_BUNDLE_MEDIA } from "../../schemas/oci.js";
/** The manifest annotation that carries the bundle's version. */
export const AGENT_VERSION_ANNOTATION = "org.fleetlet.agent.version";

/** A bundle's RELEASE arch, as an OCI architecture. */
const OCI_ARCH: Record<string, string> = { x64: "amd64", arm64: "arm64" };
/** RELEASE is a few short lines. */
const MAX_RELEASE_BYTES = 4096;

export interface AgentBundleInfo {
  path: string;
  version: string;
  architecture: string;
  digest: string;
  size: number;
  diffId: string;
}

export interface AgentPushResult {
  ref: string;
  digest: string;
  version: string;
  bundles: AgentBundleInfo[];
}

/** Reads one bundle: its digest and size, its diff id, and the version and arch its top-level RELEASE names. */
export async function readAgentBundle(path: string): Promise<AgentBundleInfo> {
  const size = statSync(path).size;
  const blob = createHash("sha256");
  const diff = createHash("sha256");
  const hashing = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      diff.update(chunk);
      cb(null, chunk);
    },
  });
  const raw = createReadStream(path).on("data", (c) => blob.update(c as Buffer));
  let release = "";
  let inRelease = false;
  await pipeline(raw, createGunzip(), hashing, async (tar: AsyncIterable<Buffer>) => {
    for await (const e of readTar(tar)) {
      if (e.kind === "header") inRelease = e.header.type === "file" && /^[^/]+\/RELEASE$/.test(e.header.name);
      else if (e.kind === "data" && inRelease && release.length < MAX_RELEASE_BYTES) release += e.chunk.toString();
    }
  });
  const field = (name: string) => new RegExp(`^${name}=(.*)$`, "m").exec(release)?.[1] ?? "";
  const version = field("version");
  const architecture = OCI_ARCH[field("arch")];
  if (!version || !architecture)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `push-agent: ${path}: not a release bundle (no RELEASE with a version and an arch of x64 or arm64)`,
      { exitCode: 2 },
    );
  return {
    path,
    version,
    architecture,
    digest: `sha256:${blob.digest("hex")}`,
    size,
    diffId: `sha256:${diff.digest("hex")}`,
  };
}

/** PUTs a manifest or index under `reference` (a tag or its own digest); returns its digest. */
async function putDocument(
  client: RegistryClient,
  ref: ImageRef,
  reference: string,
  mediaType: string,
  doc: unknown,
): Promise<{ digest: string; size: number }> {
  const body = Buffer.from(JSON.stringify(doc));
  const res = await client.request("PUT", `/v2/${ref.repository}/manifests/${reference}`, {
    scope: repoScope(ref.repository, "pull,push"),
    headers: { "content-type": mediaType },
    body,
  });
  if (res.status !== 201)
    throw new FleetError(
      "E_REGISTRY",
      `${formatReference(ref)}: putting ${reference} answered HTTP ${res.status}: ${res.body.toString("utf8").slice(0, 300)}`,
    );
  return { digest: sha256Digest(body), size: body.length };
}

/** Pushes one bundle's layer, config and manifest; returns the manifest's index entry. */
async function pushBundle(client: RegistryClient, ref: ImageRef, b: AgentBundleInfo) {
  const config = Buffer.from(
    JSON.stringify({
      architecture: b.architecture,
      os: "linux",
      config: {},
      rootfs: { type: "layers", diff_ids: [b.diffId] },
    }),
  );
  const configDigest = sha256Digest(config);
  const bundleSource = {
    digest: b.digest,
    size: b.size,
    open: (s: number, e: number) => createReadStream(b.path, { start: s, end: e }),
  };
  await pushBlob(client, ref.repository, bundleSource, []);
  await pushBlob(
    client,
    ref.repository,
    { digest: configDigest, size: config.length, open: (s, e) => Readable.from([config.subarray(s, e + 1)]) },
    [],
  );
  const annotations = { [AGENT_VERSION_ANNOTATION]: b.version };
  const manifest = {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    artifactType: AGENT_ARTIFACT_TYPE,
    config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: config.length },
    layers: [{ mediaType: AGENT_BUNDLE_MEDIA, digest: b.digest, size: b.size }],
    annotations,
  };
  const put = await putDocument(
    client,
    ref,
    sha256Digest(Buffer.from(JSON.stringify(manifest))),
    MEDIA.ociManifest,
    manifest,
  );
  return {
    mediaType: MEDIA.ociManifest,
    artifactType: AGENT_ARTIFACT_TYPE,
    ...put,
    platform: { os: "linux", architecture: b.architecture },
    annotations,
  };
}

export async function pushAgent(
  bundles: string[],
  refText: string,
  registries: Record<string, RegistryAuthConfig>,
): Promise<AgentPushResult> {
  const ref = parseReference(refText, "push-agent reference");
  if (ref.digest)
    throw new FleetError("E_INVALID_ARGUMENT", `push-agent reference "${refText}": push to a tag, not a digest`, {
      exitCode: 2,
    });
  const infos = await Promise.all(bundles.map(readAgentBundle));
  const version = infos[0]!.version;
  const other = infos.find((b) => b.version !== version);
  if (other)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `push-agent: ${other.path} is version ${other.version}, ${infos[0]!.path} is ${version}: one version per index`,
      { exitCode: 2 },
    );
  const archs = infos.map((b) => b.architecture);
  const twice = archs.find((a, i) => archs.indexOf(a) !== i);
  if (twice) throw new FleetError("E_INVALID_ARGUMENT", `push-agent: two bundles for linux/${twice}`, { exitCode: 2 });
  const client = new RegistryClient(ref.registry, registries[ref.registry] ?? {});
  try {
    const manifests = [];
    for (const b of infos) manifests.push(await pushBundle(client, ref, b));
    const index = {
      schemaVersion: 2,
      mediaType: MEDIA.ociIndex,
      artifactType: AGENT_ARTIFACT_TYPE,
      manifests,
      annotations: { [AGENT_VERSION_ANNOTATION]: version },
    };
    const { digest } = await putDocument(client, ref, ref.tag ?? version, MEDIA.ociIndex, index);
    return { ref: formatReference(ref), digest, version, bundles: infos };
  } finally {
    client.close();
  }
}
