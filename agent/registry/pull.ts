/**
 * A pull: resolve the reference, keep the manifest and config, then fetch
 * and unpack the layers the store lacks, several at a time under one shared
 * bandwidth cap. Each layer is unpacked as soon as its blob is verified,
 * while the others still download. The local store is consulted first: an
 * image whose layers are present costs one manifest request.
 */
import { statfsSync } from "node:fs";
import { runBounded } from "../bounded.js";
import { FleetError } from "../errors.js";
import type { ContentStore } from "../store/content-store.js";
import type { ImageRecord, ImageStore, LayerRecord } from "../store/image-store.js";
import { chainIds, type Snapshots } from "../store/snapshots.js";
import type { NativeCore } from "../system/native.js";
import { fetchBlob } from "./blob-fetch.js";
import { resolveImage } from "./manifest-resolve.js";
import { formatPlatform, hostPlatform, type Platform } from "./platform.js";
import { RateLimiter } from "./rate-limit.js";
import { formatReference, parseReference } from "./reference.js";
import { type RegistryAuthConfig, RegistryClient } from "./registry-client.js";

export type PullEvent =
  | { type: "resolved"; ref: string; digest: string; layers: { digest: string; size: number; present: boolean }[] }
  | { type: "progress"; layer: string; done: number; total: number }
  | { type: "downloaded"; layer: string }
  | { type: "unpacked"; layer: string }
  | { type: "done"; ref: string; digest: string; fetchedBytes: number; ms: number };

export interface PullDeps {
  root: string;
  store: ContentStore;
  snapshots: Snapshots;
  images: ImageStore;
  native: NativeCore;
  registries: Record<string, RegistryAuthConfig>;
}

export interface PullOptions {
  maxRateBytesPerSec?: number;
  concurrency?: number;
  platform?: Platform;
  signal?: AbortSignal;
  onEvent?: (e: PullEvent) => void;
  /** false: fetch and verify the blobs only, and unpack at the first run. */
  unpack?: boolean;
}

/** Room left after the pull, so a device never runs its disk to the last block. */
const DISK_RESERVE = 64 * 1024 * 1024;

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

export async function pullImage(refText: string, deps: PullDeps, opts: PullOptions = {}): Promise<ImageRecord> {
  const started = performance.now();
  const ref = parseReference(refText);
  const client = new RegistryClient(ref.registry, deps.registries[ref.registry] ?? {});
  const platform = opts.platform ?? hostPlatform();
  const resolved = await resolveImage(client, ref, platform, opts.signal);
  const { manifest } = resolved;
  const diffIds = resolved.config.rootfs.diff_ids;
  const chains = chainIds(diffIds);
  const layers: LayerRecord[] = manifest.layers.map((l, i) => ({
    digest: l.digest,
    size: l.size,
    mediaType: l.mediaType,
    diffId: diffIds[i]!,
    chainId: chains[i]!,
  }));
  const todo = layers.filter((l) => !deps.snapshots.has(l.chainId));
  opts.onEvent?.({
    type: "resolved",
    ref: formatReference(ref),
    digest: resolved.manifestDigest,
    layers: layers.map((l) => ({ digest: l.digest, size: l.size, present: !todo.includes(l) })),
  });

  const toFetch = todo.filter((l) => !deps.store.has(l.digest));
  const remaining = toFetch.reduce((n, l) => n + l.size - deps.store.partialSize(l.digest), 0);
  // Unpacked layers take more room than their compressed blobs: count twice.
  checkDiskSpace(deps.root, remaining + 2 * todo.reduce((n, l) => n + l.size, 0));

  await deps.store.put(resolved.manifestDigest, resolved.manifestBytes);
  await deps.store.put(manifest.config.digest, resolved.configBytes);
  if (resolved.index) await deps.store.put(resolved.index.digest, resolved.index.bytes);

  const limiter = new RateLimiter(opts.maxRateBytesPerSec ?? 0);
  let fetchedBytes = 0;
  const work = async (layer: LayerRecord) => {
    let done = deps.store.has(layer.digest) ? layer.size : 0;
    await fetchBlob(client, ref.repository, layer, deps.store, {
      limiter,
      parallel: Math.min(opts.concurrency ?? 3, todo.length),
      ...(opts.signal ? { signal: opts.signal } : {}),
      onBytes: (n) => {
        done += n;
        fetchedBytes += n;
        opts.onEvent?.({ type: "progress", layer: layer.digest, done, total: layer.size });
      },
    });
    opts.onEvent?.({ type: "downloaded", layer: layer.digest });
    if (opts.unpack === false) return;
    await deps.snapshots.unpack(
      layer.chainId,
      layer.diffId,
      deps.store.createReadStream(layer.digest),
      layer.mediaType,
      opts.signal,
    );
    opts.onEvent?.({ type: "unpacked", layer: layer.digest });
  };
  await runBounded(todo, opts.concurrency ?? 3, work);

  const record: ImageRecord = {
    ref: formatReference(ref),
    digest: resolved.manifestDigest,
    mediaType: resolved.manifestMediaType,
    indexDigest: resolved.index?.digest,
    configDigest: manifest.config.digest,
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
  await deps.images.put(record);
  opts.onEvent?.({
    type: "done",
    ref: record.ref,
    digest: record.digest,
    fetchedBytes,
    ms: performance.now() - started,
  });
  return record;
}
