/** The OCI image (and Docker schema 2) documents fleetlet reads and writes. */
import * as z from "./zod.js";

export const MEDIA = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayerZstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  ociLayer: "application/vnd.oci.image.layer.v1.tar",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
} as const;

/** The media type of an agent bundle's one layer: a release bundle's .tar.gz (fleetctl push-agent). */
export const AGENT_BUNDLE_MEDIA = "application/vnd.fleetlet.agent.bundle.v1.tar+gzip";

export const MANIFEST_TYPES: string[] = [MEDIA.ociManifest, MEDIA.dockerManifest];
export const INDEX_TYPES: string[] = [MEDIA.ociIndex, MEDIA.dockerList];

const digest = z.string().check(z.regex(/^sha256:[a-f0-9]{64}$/, "expected a sha256 digest"));

export const descriptor = z.object({
  mediaType: z.string(),
  digest,
  size: z.number().check(z.int(), z.nonnegative()),
  platform: z.optional(z.object({ os: z.string(), architecture: z.string(), variant: z.optional(z.string()) })),
  annotations: z.optional(z.record(z.string(), z.string())),
});
export type Descriptor = z.infer<typeof descriptor>;

export const imageManifest = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.optional(z.string()),
  config: descriptor,
  layers: z.array(descriptor),
  annotations: z.optional(z.record(z.string(), z.string())),
});
export type ImageManifest = z.infer<typeof imageManifest>;

export const imageIndex = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.optional(z.string()),
  manifests: z.array(descriptor),
});
export type ImageIndex = z.infer<typeof imageIndex>;

/** The parts of the image config fleetlet uses; the rest is kept as stored. */
/** The process settings of an image config that a container takes as its defaults. */
export const imageProcessConfig = z.object({
  Entrypoint: z.nullish(z.array(z.string())),
  Cmd: z.nullish(z.array(z.string())),
  Env: z.nullish(z.array(z.string())),
  WorkingDir: z.nullish(z.string()),
  User: z.nullish(z.string()),
  StopSignal: z.nullish(z.string()),
});

export const imageConfig = z.object({
  architecture: z.optional(z.string()),
  os: z.optional(z.string()),
  variant: z.optional(z.string()),
  config: z.nullish(imageProcessConfig),
  rootfs: z.object({ type: z.literal("layers"), diff_ids: z.array(digest) }),
});
export type ImageConfig = z.infer<typeof imageConfig>;
