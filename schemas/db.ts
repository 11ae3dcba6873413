/**
 * `db.json`, the device's state that must survive a restart: image records,
 * the accepted and the last good desired state, each service's container,
 * the generations seen per topic, and the leases that keep content from
 * garbage collection while a pull or an apply uses it.
 */

import { type DesiredState, documentWithAddedFields, type ServiceSpec, withAddedFields } from "./desired.js";
import { networkSpec } from "./network.js";
import { imageProcessConfig } from "./oci.js";
import { acceptedDocument } from "./reported.js";
import * as z from "./zod.js";

const digest = z.string().check(z.regex(/^sha256:[a-f0-9]{64}$/, "expected sha256:<64 hex digits>"));

export const layerRecord = z.object({
  digest,
  size: z.number().check(z.int(), z.nonnegative()),
  mediaType: z.string(),
  diffId: digest,
  chainId: digest,
});
export type LayerRecord = z.infer<typeof layerRecord>;

/** An image: a reference naming a manifest, which names a config and layers. */
export const imageRecord = z.object({
  ref: z.string(),
  /** The manifest's digest. */
  digest,
  mediaType: z.string(),
  /** The index (or manifest list) the manifest was picked from. */
  indexDigest: z.optional(digest),
  configDigest: digest,
  layers: z.array(layerRecord),
  platform: z.string(),
  config: imageProcessConfig,
  size: z.number().check(z.int(), z.nonnegative()),
  pulledAt: z.string(),
});
export type ImageRecord = z.infer<typeof imageRecord>;

/** A container network as made on this device: the document's definition, the subnet picked for it and its bridge. */
export const networkRecord = z.object({
  /** The network's name in the document. */
  name: z.string(),
  spec: networkSpec,
  subnet: z.string(),
  bridge: z.string(),
});
export type NetworkRecord = z.infer<typeof networkRecord>;

/** One service's current container, as the agent last left it. */
export const serviceRecord = z.object({
  containerId: z.string(),
  hash: z.string(),
  image: z.string(),
  digest: z.string(),
  restarts: z.number().check(z.int(), z.nonnegative()),
  deployment: z.string(),
  /** As stored, read with the fields added since at their defaults. */
  spec: z.pipe(
    z.custom<ServiceSpec>((v) => typeof v === "object" && v !== null, "expected a service spec"),
    z.transform(withAddedFields),
  ),
  /** The networks the container joined, in the service's order. */
  networks: z.optional(z.array(networkRecord)),
  /** The container's address on each network, by network name (from its CNI results). */
  addresses: z.optional(z.record(z.string(), z.string())),
});
export type ServiceRecord = z.infer<typeof serviceRecord>;

/**
 * A lease: content a live process is fetching, unpacking or about to use,
 * which garbage collection must leave alone. Its holder is named by pid and
 * start time, so a lease whose process died is recognised and dropped.
 */
export const leaseRecord = z.object({
  purpose: z.string(),
  holder: z.object({ pid: z.number().check(z.int(), z.positive()), startTime: z.string().check(z.regex(/^\d+$/)) }),
  createdAt: z.string(),
  blobs: z.array(digest),
  snapshots: z.array(digest),
});
export type LeaseRecord = z.infer<typeof leaseRecord>;

/** A document as stored, read with the fields added since at their defaults. */
const document = z.pipe(
  z.custom<DesiredState>(
    (v) => typeof v === "object" && v !== null && typeof (v as { services?: unknown }).services === "object",
    "expected a desired-state document",
  ),
  z.transform(documentWithAddedFields),
);

export const dbData = z.looseObject({
  images: z.record(z.string(), imageRecord),
  /** The accepted desired state, persisted before anything changes. */
  desired: z.nullable(document),
  /** The last deployment that became healthy: what a rollback restores. */
  lastGood: z.nullable(document),
  /** The good deployment before lastGood: what an operator's rollback of lastGood restores. */
  previousGood: z.nullable(document),
  services: z.record(z.string(), serviceRecord),
  /** The highest generation accepted: older documents are ignored. */
  generation: z.nullable(z.number().check(z.int())),
  /** The highest generation accepted per source ("device", "group:<name>"): each topic counts its own. */
  generations: z.record(z.string(), z.number().check(z.int())),
  /** Where the accepted desired state came from: "device" or "group:<name>". */
  desiredSource: z.nullable(z.string()),
  /** The last document accepted from a topic and what the device knew of its freshness (reported as lastAccepted). */
  lastAccepted: z.optional(z.nullable(acceptedDocument)),
  /** Leases by id. */
  leases: z.record(z.string(), leaseRecord),
  /** The container networks made for the desired documents, by bridge: name, definition and subnet, kept so a restarted agent finds them. */
  networks: z.optional(z.record(z.string(), networkRecord)),
});
export type DbData = z.infer<typeof dbData>;
