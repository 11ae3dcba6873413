/**
 * Downloads one blob into its ingest, resuming from the bytes already on
 * disk with a closed `Range: bytes=N-(size-1)` (some registries refuse open
 * ranges). A 206 continues the partial; a 200 that ignored the range starts
 * it over. Broken connections are retried from where they broke; attempts
 * that made progress do not count towards giving up.
 */
import type { Writable } from "node:stream";
import { FleetError } from "../errors.js";
import type { ContentStore } from "../store/content-store.js";
import type { Ingest } from "../store/ingest.js";
import type { BlobAnswer } from "./blob-http.js";
import type { RateLimiter } from "./rate-limit.js";
import { type RegistryClient, repoScope } from "./registry-client.js";

export interface BlobFetchOptions {
  limiter: RateLimiter;
  onBytes?: (n: number) => void;
  signal?: AbortSignal;
  /** How many downloads share the limiter. */
  parallel?: number;
  /** Given every byte of the blob as it reaches the disk, when the download starts from its first (Ingest.follow). */
  follower?: Writable;
}

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

/** Gives up the answer's connection, then throws `err`. */
function fail(res: BlobAnswer, err: unknown): never {
  res.body.destroy();
  throw err;
}

/** Opens the GET for the range and checks the answer: a 206 at the offset, or a 200 that restarts the ingest. */
async function openRange(
  client: RegistryClient,
  repository: string,
  ingest: Ingest,
  range: { offset: number; end: number },
  signal: AbortSignal | undefined,
): Promise<BlobAnswer> {
  const { digest, expectedSize: size } = ingest;
  const { offset, end } = range;
  const headers: Record<string, string> = offset > 0 || end < size - 1 ? { range: `bytes=${offset}-${end}` } : {};
  const res = await client.openBlob(`/v2/${repository}/blobs/${digest}`, {
    scope: repoScope(repository, "pull"),
    headers,
    signal,
  });
  if (res.status === 404)
    fail(res, new FleetError("E_REGISTRY", `${client.registry}/${repository}: blob ${digest} is not in the registry`));
  if (res.status === 206) {
    const start = Number(/bytes (\d+)-/.exec(String(res.headers["content-range"] ?? ""))?.[1] ?? Number.NaN);
    if (start !== offset)
      fail(
        res,
        new FleetError(
          "E_REGISTRY_UNREACHABLE",
          `${client.registry}: asked for blob ${digest} from byte ${offset}, got a range starting at ${start}`,
        ),
      );
  } else if (res.status === 200) {
    // The registry ignored the range and sends it all.
    if (offset > 0) await ingest.restart().catch((err: unknown) => fail(res, err));
  } else {
    const retryable = res.status >= 500 || res.status === 429;
    fail(
      res,
      new FleetError(
        retryable ? "E_REGISTRY_UNREACHABLE" : "E_REGISTRY",
        `${client.registry}: GET blob ${digest} answered HTTP ${res.status}`,
      ),
    );
  }
  return res;
}

/** Bytes per receive: a step between two looks at progress, the follower and a cancel. */
const STEP_BYTES = 2 << 20;

/**
 * Receives the body into the ingest step by step: the native core writes
 * and hashes each byte as it comes off the socket. Whatever arrived before
 * a broken connection is on disk and hashed, so the next attempt resumes
 * after it. `end`: where the body should end (the range's end, or the
 * blob's); there, whether it does is read without paying the limiter for
 * more. `paid`: the bytes the rate limiter let through before the request;
 * a body longer than that (a 200 that ignored the range) waits for the
 * limiter step by step.
 */
async function receiveBody(
  client: RegistryClient,
  res: BlobAnswer,
  ingest: Ingest,
  opts: BlobFetchOptions,
  { end, paid }: { end: number; paid: number },
) {
  let probed = false;
  try {
    for (;;) {
      if (ingest.offset >= end && !probed) {
        probed = true;
        const probe = await ingest.receive(res.body, 0);
        if (probe.error) throw probe.error;
        if (probe.end) return;
      }
      if (ingest.offset >= ingest.expectedSize) {
        throw new FleetError(
          "E_DIGEST_MISMATCH",
          `blob ${ingest.digest}: more than the ${ingest.expectedSize} bytes the manifest declares`,
        );
      }
      // What was paid for first; past it, a slice the limiter lets through at once.
      const unpaid = opts.limiter.limited ? Math.max(16 << 10, Math.round(opts.limiter.rate / 8)) : STEP_BYTES;
      const want = Math.min(STEP_BYTES, paid > 0 ? paid : unpaid);
      if (paid < want) {
        await opts.limiter.take(want - paid, opts.signal);
        paid = want;
      }
      const r = await ingest.receive(res.body, want);
      paid -= r.bytes;
      if (r.bytes > 0) opts.onBytes?.(r.bytes);
      if (r.error) throw r.error;
      if (r.end) return;
    }
  } catch (err) {
    throw client.networkError(`GET blob ${ingest.digest}`, err);
  } finally {
    res.body.destroy(); // back to the kept connections when read whole, else closed
  }
}

async function downloadRange(
  client: RegistryClient,
  repository: string,
  ingest: Ingest,
  opts: BlobFetchOptions,
): Promise<void> {
  const range = nextRange(ingest, opts);
  // The limiter lets the range through before it is asked for: no byte waits in the socket for it (bytes
  // there are lost when the process is killed), and each range comes at the link's own speed.
  const paid = range.end + 1 - range.offset;
  await opts.limiter.take(paid, opts.signal).catch((err: unknown) => {
    throw client.networkError(`GET blob ${ingest.digest}`, err);
  });
  const res = await openRange(client, repository, ingest, range, opts.signal);
  const size = ingest.expectedSize;
  const expectedEnd = res.status === 206 ? range.end + 1 : size;
  await receiveBody(client, res, ingest, opts, { end: expectedEnd, paid });
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
