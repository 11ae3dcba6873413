/**
 * Downloads one blob into its ingest, resuming from the bytes already on
 * disk with a closed `Range: bytes=N-(size-1)` (some registries refuse open
 * ranges). A 206 continues the partial; a 200 that ignored the range starts
 * it over. Broken connections are retried from where they broke; attempts
 * that made progress do not count towards giving up.
 */
import type { Readable, Writable } from "node:stream";
import { finished } from "node:stream/promises";
import { FleetError } from "../errors.js";
import type { ContentStore } from "../store/content-store.js";
import type { Ingest } from "../store/ingest.js";
import type { RateLimiter } from "./rate-limit.js";
import { type RegistryClient, repoScope, type StreamResponse } from "./registry-client.js";

export interface BlobFetchOptions {
  limiter: RateLimiter;
  onBytes?: (n: number) => void;
  signal?: AbortSignal;
  /** How many downloads share the limiter. */
  parallel?: number;
  /** Given every byte of the blob as it reaches the disk, when the download starts from its first (Ingest.follow). */
  follower?: Writable;
}

const FLUSH_BYTES = 1 << 20;

/** Bytes per range request when `parallel` downloads share a cap of `rate` bytes/s. */
export function rangeBytes(rate: number, parallel = 1): number {
  return Math.min(2 << 20, Math.max(64 << 10, Math.round(rate / 4 / Math.max(1, parallel))));
}

/** The next range of the blob to ask for: the rest of it, or one rate-sized piece when the download is rate-limited. */
function nextRange(ingest: Ingest, opts: BlobFetchOptions): { offset: number; end: number } {
  const size = ingest.expectedSize;
  const offset = ingest.offset;
  const end = opts.limiter.limited
    ? Math.min(size, offset + rangeBytes(opts.limiter.rate, opts.parallel)) - 1
    : size - 1;
  return { offset, end };
}

/** Opens the GET for the range and checks the answer: a 206 at the offset, or a 200 that restarts the ingest. */
async function openRange(
  client: RegistryClient,
  repository: string,
  ingest: Ingest,
  range: { offset: number; end: number },
  signal: AbortSignal | undefined,
): Promise<StreamResponse> {
  const { digest, expectedSize: size } = ingest;
  const { offset, end } = range;
  const headers: Record<string, string> = offset > 0 || end < size - 1 ? { range: `bytes=${offset}-${end}` } : {};
  const res = await client.openStream(`/v2/${repository}/blobs/${digest}`, {
    scope: repoScope(repository, "pull"),
    headers,
    signal,
  });
  if (res.status === 404) {
    res.body.destroy();
    throw new FleetError("E_REGISTRY", `${client.registry}/${repository}: blob ${digest} is not in the registry`);
  }
  if (res.status === 206) {
    const start = Number(/bytes (\d+)-/.exec(String(res.headers["content-range"] ?? ""))?.[1] ?? Number.NaN);
    if (start !== offset) {
      res.body.destroy();
      throw new FleetError(
        "E_REGISTRY_UNREACHABLE",
        `${client.registry}: asked for blob ${digest} from byte ${offset}, got a range starting at ${start}`,
      );
    }
  } else if (res.status === 200) {
    if (offset > 0) await ingest.restart(); // the registry ignored the range and sends it all
  } else {
    res.body.destroy();
    const retryable = res.status >= 500 || res.status === 429;
    throw new FleetError(
      retryable ? "E_REGISTRY_UNREACHABLE" : "E_REGISTRY",
      `${client.registry}: GET blob ${digest} answered HTTP ${res.status}`,
    );
  }
  return res;
}

/** Writes a rate-limited body into the ingest chunk by chunk, each after the limiter lets it through. */
async function copyLimited(
  client: RegistryClient,
  body: AsyncIterable<Buffer>,
  ingest: Ingest,
  opts: BlobFetchOptions,
): Promise<void> {
  try {
    for await (const chunk of body) {
      await opts.limiter.take(chunk.length, opts.signal);
      await ingest.writeMany([chunk], chunk.length);
      opts.onBytes?.(chunk.length);
    }
  } catch (err) {
    throw client.networkError(`GET blob ${ingest.digest}`, err);
  }
}

/**
 * Writes the body into the ingest in batches of FLUSH_BYTES, taking the
 * chunks as they arrive (no copies): one batch is on its way to disk (and
 * the hash) while the next fills, and only past that does the socket wait.
 * Whatever arrived before a broken connection is written, so the next
 * attempt resumes after it.
 */
async function copyToIngest(
  client: RegistryClient,
  body: Readable,
  ingest: Ingest,
  opts: BlobFetchOptions,
): Promise<void> {
  if (opts.limiter.limited) return copyLimited(client, body, ingest, opts);
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let writes = Promise.resolve();
  let inFlight = 0;
  const flush = () => {
    if (pendingBytes === 0) return writes;
    const chunks = pending;
    const total = pendingBytes;
    pending = [];
    pendingBytes = 0;
    inFlight++;
    writes = writes.then(async () => {
      await ingest.writeMany(chunks, total);
      inFlight--;
      opts.onBytes?.(total);
    });
    writes.catch((err: unknown) => body.destroy(err as Error)); // stop receiving; the error is thrown below
    return writes;
  };
  body.on("data", (chunk: Buffer) => {
    pending.push(chunk);
    pendingBytes += chunk.length;
    if (pendingBytes < FLUSH_BYTES) return;
    const written = flush();
    if (inFlight < 2) return;
    body.pause();
    written.then(
      () => body.resume(),
      () => undefined, // flush() destroys the body on a failed write
    );
  });
  // The end, an error, or a close before the end (a premature close, which is retried).
  const received = finished(body);
  try {
    await received;
  } catch (err) {
    await flush().catch(() => undefined); // a failed write is the error the caller sees below, once
    await writes;
    throw client.networkError(`GET blob ${ingest.digest}`, err);
  }
  await flush();
}

async function downloadRange(
  client: RegistryClient,
  repository: string,
  ingest: Ingest,
  opts: BlobFetchOptions,
): Promise<void> {
  const range = nextRange(ingest, opts);
  const res = await openRange(client, repository, ingest, range, opts.signal);
  await copyToIngest(client, res.body, ingest, opts);
  const size = ingest.expectedSize;
  const expectedEnd = res.status === 206 ? range.end + 1 : size;
  if (ingest.offset < expectedEnd) {
    throw new FleetError(
      "E_REGISTRY_UNREACHABLE",
      `${client.registry}: blob ${ingest.digest} ended after ${ingest.offset} of ${size} bytes`,
    );
  }
}

/**
 * Fetches `digest` into the store unless it is there; verifies before it
 * counts as stored. Resolves true when `opts.follower` was given every byte
 * of the blob, false when it missed some or all of them (the blob was
 * stored already, or resumed, or restarted).
 */
export async function fetchBlob(
  client: RegistryClient,
  repository: string,
  desc: { digest: string; size: number },
  store: ContentStore,
  opts: BlobFetchOptions,
): Promise<boolean> {
  if (store.has(desc.digest)) return false;
  const release = await store.lockIngest(desc.digest, opts.signal).catch((err: unknown) => {
    // A cancel is E_ABORTED like any other; the lock's own errors pass as they are.
    throw opts.signal?.aborted ? client.networkError(`waiting for another download of blob ${desc.digest}`, err) : err;
  });
  try {
    // Another process may have finished it while we waited for the lock.
    return store.has(desc.digest) ? false : await fetchLocked(client, repository, desc, store, opts);
  } finally {
    release();
  }
}

async function fetchLocked(
  client: RegistryClient,
  repository: string,
  desc: { digest: string; size: number },
  store: ContentStore,
  opts: BlobFetchOptions,
): Promise<boolean> {
  const ingest = await store.openIngest(desc.digest, desc.size);
  if (opts.follower) ingest.follow(opts.follower);
  opts.onBytes?.(ingest.offset);
  try {
    let failures = 0;
    for (;;) {
      const before = ingest.offset;
      try {
        while (ingest.offset < desc.size) await downloadRange(client, repository, ingest, opts);
        await ingest.commit();
        return ingest.followed;
      } catch (err) {
        const e = err as FleetError;
        if (e.code !== "E_REGISTRY_UNREACHABLE") throw err;
        failures = ingest.offset > before ? 1 : failures + 1;
        if (failures >= client.retry.attempts) throw err;
        await client.wait(`GET blob ${desc.digest}`, client.backoff(failures), opts.signal);
      }
    }
  } finally {
    await ingest.close();
  }
}
