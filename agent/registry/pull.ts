/**
 * A pull: resolve the reference, keep the manifest and config, then fetch
 * and unpack the layers the store lacks, several at a time under one shared
 * bandwidth cap. Each layer is unpacked as soon as its blob is verified,
 * while the others still download. The local store is consulted first: an
 * image whose layers are present costs one manifest request (a tag's; what
 * it names by digest, the store has).
 */
import { statfsSync } from "node:fs";
import { PassThrough } from "node:stream";
import { runBounded } from "../bounded.js";
import { monotonicMs } from "../clock.js";
import { FleetError } from "../errors.js";
import type { ContentStore } from "../store/content-store.js";
import type { ImageRecord, ImageStore, LayerRecord } from "../store/image-store.js";
import { DEFAULT_LAYER_LIMITS } from "../store/layer-limits.js";
import type { Lease, Leases } from "../store/leases.js";
import type { LocalStore } from "../store/local-store.js";
import { chainIds, type Snapshots } from "../store/snapshots.js";
import { fetchBlob } from "./blob-fetch.js";
import { type ResolvedImage, resolveImage } from "./manifest-resolve.js";
import { formatPlatform, hostPlatform, type Platform } from "./platform.js";
import { RateLimiter } from "./rate-limit.js";
import { formatReference, type ImageRef, parseReference } from "./reference.js";
import type { RegistryAuthConfig, RegistryClient } from "./registry-client.js";
import { RegistryClients } from "./registry-clients.js";

export type PullEvent =
  | { type: "resolved"; ref: string; digest: string; layers: { digest: string; size: number; present: boolean }[] }
  | { type: "progress"; layer: string; done: number; total: number }
  | { type: "downloaded"; layer: string }
  | { type: "unpacked"; layer: string }
  /** Something the unpack left out without refusing the layer (an xattr outside the allow-list). */
  | { type: "warning"; layer: string; message: string }
  | { type: "done"; ref: string; digest: string; fetchedBytes: number; ms: number };

export interface PullDeps {
  root: string;
  store: ContentStore;
  snapshots: Snapshots;
  images: ImageStore;
  leases: Leases;
  registries: Record<string, RegistryAuthConfig>;
  /**
   * The clients to reuse, with their connections and tokens, and the tags
   * already resolved under the caller's lease; without it the pull makes a
   * client of its own and closes it at the end.
   */
  clients?: RegistryClients;
}

/** A pull's dependencies on a store opened on its state root (`clients` as in PullDeps). */
export function storePullDeps(
  local: LocalStore,
  registries: Record<string, RegistryAuthConfig>,
  clients?: RegistryClients,
): PullDeps {
  const { root, content: store, snapshots, images, leases } = local;
  return { root, store, snapshots, images, leases, registries, ...(clients ? { clients } : {}) };
}

export interface PullOptions {
  maxRateBytesPerSec?: number;
  concurrency?: number;
  platform?: Platform;
  signal?: AbortSignal;
  onEvent?: (e: PullEvent) => void;
  /** false: fetch and verify the blobs only, and unpack at the first run. */
  unpack?: boolean;
  /** The caller's lease, which then outlives the pull (an apply's); otherwise the pull takes its own. */
  lease?: Lease;
}

/** What the download may run ahead of a layer's unpack, while it feeds it. */
const FEED_BYTES = 4 << 20;

/** Room left after the pull, so a device never runs its disk to the last block; the unpack keeps it too. */
const DISK_RESERVE = DEFAULT_LAYER_LIMITS.diskReserveBytes;

function checkDiskSpace(root: string, needed: number): void {
  const st = statfsSync(root);
  const free = st.bavail * st.bsize;
  if (free < needed + DISK_RESERVE) {
    const mib = (n: number) => `${Math.ceil(n / 1024 / 1024)} MiB`;
    throw new FleetError(
      "E_NO_SPACE",
      `not enough disk space in ${root}: the pull needs about ${mib(needed)} (plus ${mib(DISK_RESERVE)} kept free), ${mib(free)} is free`,
    );
  }
}

/** The layers a resolved manifest names, with their diff and chain ids from the config. */
function layerRecords(resolved: ResolvedImage): LayerRecord[] {
  const diffIds = resolved.config.rootfs.diff_ids;
  const chains = chainIds(diffIds);
  return resolved.manifest.layers.map((l, i) => ({
    digest: l.digest,
    size: l.size,
    mediaType: l.mediaType,
    diffId: diffIds[i]!,
    chainId: chains[i]!,
  }));
}

function imageRecord(ref: string, resolved: ResolvedImage, layers: LayerRecord[], platform: Platform): ImageRecord {
  return {
    ref,
    digest: resolved.manifestDigest,
    mediaType: resolved.manifestMediaType,
    indexDigest: resolved.index?.digest,
    configDigest: resolved.manifest.config.digest,
    layers,
    platform: formatPlatform({
      os: resolved.config.os ?? platform.os,
      architecture: resolved.config.architecture ?? platform.architecture,
      variant: resolved.config.variant ?? undefined,
    }),
    config: resolved.config.config ?? {},
    size: layers.reduce((n, l) => n + l.size, 0),
    pulledAt: new Date().toISOString(),
  };
}

interface LayerFetch {
  client: RegistryClient;
  repository: string;
  deps: PullDeps;
  opts: PullOptions;
  /** Layers being fetched at once. */
  parallel: number;
  limiter: RateLimiter;
  onFetched(n: number): void;
}

/**
 * Fetches one layer's blob (resuming a partial) and unpacks it. A download
 * that starts from the blob's first byte feeds the unpack as it goes (each
 * batch once it is on disk), so the layer is unpacked when its last byte
 * lands; the snapshot is still named only after the blob is verified and
 * committed and the diff id checked. Otherwise (a resumed partial, a blob
 * already stored, a registry that restarted the body) the layer unpacks
 * from the stored blob after.
 */
async function fetchLayer(layer: LayerRecord, f: LayerFetch): Promise<void> {
  const { deps, opts } = f;
  const unpackOpts = {
    ...(opts.signal ? { signal: opts.signal } : {}),
    onWarning: (message: string) => opts.onEvent?.({ type: "warning", layer: layer.digest, message }),
  };
  const unpack = opts.unpack !== false;
  const feed = unpack && !deps.store.has(layer.digest) ? new PassThrough({ highWaterMark: FEED_BYTES }) : undefined;
  // The fed unpack names its snapshot only once the blob is committed, and every byte of it was fed.
  const committed = settlement();
  const streaming =
    feed && settled(deps.snapshots.unpack(layer, feed, { ...unpackOpts, committed: committed.promise }));
  // An unpack that stops reading (a refused layer) lets the download go on without it.
  void streaming?.then(() => feed?.destroy());
  let done = deps.store.has(layer.digest) ? layer.size : 0;
  let followed: boolean;
  try {
    followed = await fetchBlob(f.client, f.repository, layer, deps.store, {
      limiter: f.limiter,
      parallel: f.parallel,
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(feed ? { follower: feed } : {}),
      onBytes: (n) => {
        done += n;
        f.onFetched(n);
        opts.onEvent?.({ type: "progress", layer: layer.digest, done, total: layer.size });
      },
    });
  } catch (err) {
    committed.reject(err);
    feed?.destroy();
    await streaming; // its tmp directory is gone before the error goes up
    throw err;
  }
  if (followed) committed.resolve();
  else committed.reject(new FleetError("E_ABORTED", `layer ${layer.digest}: the unpack missed bytes of the blob`));
  opts.onEvent?.({ type: "downloaded", layer: layer.digest });
  if (!unpack) return;
  if (feed && followed) {
    feed.end();
    const failed = await streaming;
    if (failed) throw failed;
  } else {
    feed?.destroy();
    await streaming; // fed only part of the blob, it failed and cleaned up: the stored blob is unpacked instead
    await deps.snapshots.unpack(layer, deps.store.createReadStream(layer.digest), unpackOpts);
  }
  opts.onEvent?.({ type: "unpacked", layer: layer.digest });
}

/** A promise with its resolve and reject, its rejection handled (whoever awaits it reports it). */
function settlement(): { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void } {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // the unpack, when it waits for it, fails with it and reports that
  return { promise, resolve, reject };
}

/** What an unpack threw, or undefined once it succeeded. */
function settled(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (err: unknown) => err ?? new Error("unpack failed"),
  );
}

/**
 * Pulls an image under a lease (the caller's, or one of its own released at
 * the end): everything the manifest names is leased before the store is
 * asked what it already has, so a concurrent prune never takes it away.
 */
export async function pullImage(refText: string, deps: PullDeps, opts: PullOptions = {}): Promise<ImageRecord> {
  const ref = parseReference(refText);
  const lease = opts.lease ?? (await deps.leases.take(`pull ${formatReference(ref)}`));
  const clients = deps.clients ?? new RegistryClients();
  try {
    return await pullLeased(ref, lease, { ...deps, clients }, opts);
  } finally {
    if (!deps.clients) clients.close();
    if (!opts.lease) await lease.release();
  }
}

async function pullLeased(
  ref: ImageRef,
  lease: Lease,
  deps: PullDeps & { clients: RegistryClients },
  opts: PullOptions,
): Promise<ImageRecord> {
  const started = monotonicMs();
  const client = deps.clients.client(ref.registry, deps.registries[ref.registry] ?? {});
  const platform = opts.platform ?? hostPlatform();
  const stored = (digest: string, maxBytes: number) => deps.store.readSmall(digest, maxBytes);
  const resolve = () => resolveImage(client, ref, platform, { signal: opts.signal, stored });
  // Under the caller's lease (a deployment's), a reference is resolved once; a pull's own lease is its alone.
  const resolved = opts.lease
    ? await deps.clients.resolution(opts.lease, `${formatReference(ref)} ${formatPlatform(platform)}`, resolve)
    : await resolve();
  const layers = layerRecords(resolved);
  const configDigest = resolved.manifest.config.digest;
  // One write to db.json for all of it: the manifest, config, index and layer blobs, and the snapshots.
  const index = resolved.index ? [resolved.index.digest] : [];
  const blobs = [resolved.manifestDigest, configDigest, ...index, ...layers.map((l) => l.digest)];
  await lease.add({ blobs, snapshots: layers.map((l) => l.chainId) });
  const todo = layers.filter((l) => !deps.snapshots.has(l.chainId));
  const present = (l: LayerRecord) => !todo.includes(l);
  const layerList = layers.map((l) => ({ digest: l.digest, size: l.size, present: present(l) }));
  opts.onEvent?.({ type: "resolved", ref: formatReference(ref), digest: resolved.manifestDigest, layers: layerList });

  const remaining = todo.filter((l) => !deps.store.has(l.digest));
  const toDownload = remaining.reduce((n, l) => n + l.size - deps.store.partialSize(l.digest), 0);
  // Unpacked layers take more room than their compressed blobs: count twice.
  checkDiskSpace(deps.root, toDownload + 2 * todo.reduce((n, l) => n + l.size, 0));

  await deps.store.put(resolved.manifestDigest, resolved.manifestBytes);
  await deps.store.put(configDigest, resolved.configBytes);
  if (resolved.index) await deps.store.put(resolved.index.digest, resolved.index.bytes);

  let fetchedBytes = 0;
  const concurrency = opts.concurrency ?? 3;
  const fetch: LayerFetch = {
    client,
    repository: ref.repository,
    deps,
    opts,
    parallel: Math.min(concurrency, todo.length),
    limiter: new RateLimiter(opts.maxRateBytesPerSec ?? 0),
    onFetched: (n) => {
      fetchedBytes += n;
    },
  };
  // A layer unpacks while it downloads, so a pull killed mid-download leaves a half-made snapshot: clear those of dead pulls.
  if (todo.length > 0 && opts.unpack !== false)
    for (const dir of deps.snapshots.abandoned()) await deps.snapshots.erase(dir);
  await runBounded(todo, concurrency, (layer) => fetchLayer(layer, fetch));

  const record = await deps.images.put(imageRecord(formatReference(ref), resolved, layers, platform));
  const ms = monotonicMs() - started;
  opts.onEvent?.({ type: "done", ref: record.ref, digest: record.digest, fetchedBytes, ms });
  return record;
}
