/**
 * Blob downloads from a registry that answers resumes badly: a 200 that
 * ignores the Range (the partial must start over, never get the whole body
 * appended), a 206 from the wrong offset, a body longer than the blob, a
 * connection that breaks mid-body. The blob is stored only when whole and
 * verified, and a resumed download never fetches again what it has.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fetchBlob } from "../../agent/registry/blob-fetch.js";
import { RateLimiter } from "../../agent/registry/rate-limit.js";
import { RegistryClient } from "../../agent/registry/registry-client.js";
import { ContentStore } from "../../agent/store/content-store.js";
import { loadNative } from "../../agent/system/native.js";
import { HostileServers } from "../support/hostile-server.js";
import { makeTls, type TlsFiles } from "../support/registry.js";
import { randomBlob as blob, caught } from "../support/test-blobs.js";

let work: string;
let tls: TlsFiles;
let servers: HostileServers;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-blob-fetch-hostile-"));
  tls = await makeTls(work);
  servers = new HostileServers(tls);
});

afterAll(() => {
  servers.close();
  rmSync(work, { recursive: true, force: true });
});

/** A fresh store whose partial of `digest` already holds `prefix`. */
function storeWithPartial(name: string, digest: string, prefix: Buffer): ContentStore {
  const store = new ContentStore(join(work, name), loadNative().core);
  if (prefix.length > 0) writeFileSync(join(work, name, "ingest", `${digest.slice(7)}.partial`), prefix);
  return store;
}

const rangeStart = (req: IncomingMessage) => Number(/bytes=(\d+)-/.exec(req.headers.range ?? "")?.[1] ?? 0);

async function client(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<RegistryClient> {
  const s = await servers.serve(true, handler);
  return new RegistryClient(s.host, { ca: tls.caCert }, { attempts: 3, baseMs: 10, maxMs: 20 });
}

describe("resuming against a registry that answers badly", () => {
  it("starts the partial over when a 200 ignores the Range, never appending the whole body to it", async () => {
    const { data, digest } = blob(3 << 20);
    const store = storeWithPartial("ignores-range", digest, data.subarray(0, 1 << 20));
    const ranges: (string | undefined)[] = [];
    const c = await client((req, res) => {
      ranges.push(req.headers.range);
      res.writeHead(200, { "content-length": String(data.length) }).end(data);
    });
    try {
      const follower = new PassThrough();
      follower.resume();
      const followed = await fetchBlob(c, "a", { digest, size: data.length }, store, {
        limiter: new RateLimiter(0),
        follower,
      });
      expect(ranges).toEqual([`bytes=${1 << 20}-${data.length - 1}`]);
      expect(followed).toBe(false);
      expect(store.has(digest)).toBe(true);
      expect(readFileSync(join(work, "ignores-range", "blobs", "sha256", digest.slice(7))).equals(data)).toBe(true);
    } finally {
      c.close();
    }
  });

  it("refuses a 206 that starts elsewhere than asked, keeping the partial as it was", async () => {
    const { data, digest } = blob(2 << 20);
    const prefix = data.subarray(0, 1 << 20);
    const store = storeWithPartial("wrong-offset", digest, prefix);
    const asked: number[] = [];
    const c = await client((req, res) => {
      asked.push(rangeStart(req));
      res
        .writeHead(206, {
          "content-range": `bytes 0-${data.length - 1}/${data.length}`,
          "content-length": String(data.length),
        })
        .end(data);
    });
    try {
      const err = await caught(
        fetchBlob(c, "a", { digest, size: data.length }, store, { limiter: new RateLimiter(0) }),
      );
      expect(err.code).toBe("E_REGISTRY_UNREACHABLE");
      expect(asked).toEqual([1 << 20, 1 << 20, 1 << 20]);
      expect(err.message).toContain(`from byte ${1 << 20}, got a range starting at 0`);
      expect(store.has(digest)).toBe(false);
      const partial = join(work, "wrong-offset", "ingest", `${digest.slice(7)}.partial`);
      expect(readFileSync(partial).equals(prefix)).toBe(true);
    } finally {
      c.close();
    }
  });

  it("refuses a body longer than the blob, writing no byte past its size", async () => {
    const { data, digest } = blob(1 << 20);
    const store = storeWithPartial("too-long", digest, Buffer.alloc(0));
    const c = await client((_req, res) => {
      res.writeHead(200);
      res.write(data);
      for (let i = 0; i < 16; i++) res.write(randomBytes(1 << 20));
      res.end();
    });
    try {
      const err = await caught(
        fetchBlob(c, "a", { digest, size: data.length }, store, { limiter: new RateLimiter(0) }),
      );
      expect(err.code).toBe("E_DIGEST_MISMATCH");
      expect(store.has(digest)).toBe(false);
      const partial = join(work, "too-long", "ingest", `${digest.slice(7)}.partial`);
      expect(statSync(partial, { throwIfNoEntry: false })?.size ?? 0).toBeLessThanOrEqual(data.length);
    } finally {
      c.close();
    }
  });

  it("resumes a body cut short after its Content-Length promised more, fetching each byte once", async () => {
    const { data, digest } = blob(4 << 20);
    const store = storeWithPartial("cut-short", digest, Buffer.alloc(0));
    let sent = 0;
    const c = await client((req, res) => {
      const start = rangeStart(req);
      const headers =
        start > 0
          ? {
              "content-range": `bytes ${start}-${data.length - 1}/${data.length}`,
              "content-length": String(data.length - start),
            }
          : { "content-length": String(data.length) };
      res.writeHead(start > 0 ? 206 : 200, headers);
      if (start > 0) {
        sent += data.length - start;
        return void res.end(data.subarray(start));
      }
      // The first answer breaks off after 1.5 MiB.
      sent += 3 << 19;
      res.write(data.subarray(0, 3 << 19), () => res.destroy());
    });
    try {
      await fetchBlob(c, "a", { digest, size: data.length }, store, { limiter: new RateLimiter(0) });
      expect(store.has(digest)).toBe(true);
      expect(sent).toBe(data.length);
    } finally {
      c.close();
    }
  });

  it("refuses a complete body that does not hash to its digest, and keeps nothing of it", async () => {
    const { data, digest } = blob(1 << 20);
    const wrong = Buffer.from(data);
    wrong[1000] = wrong[1000]! ^ 1;
    const store = storeWithPartial("corrupt", digest, Buffer.alloc(0));
    const c = await client((_req, res) => res.writeHead(200, { "content-length": String(wrong.length) }).end(wrong));
    try {
      const err = await caught(
        fetchBlob(c, "a", { digest, size: data.length }, store, { limiter: new RateLimiter(0) }),
      );
      expect(err.code).toBe("E_DIGEST_MISMATCH");
      expect(store.has(digest)).toBe(false);
      expect(store.partials()).toEqual([]);
    } finally {
      c.close();
    }
  });
});

/** Aborts once the server has seen one request; `p` must then fail with E_ABORTED, no second request sent. */
async function abortAfterFirstRequest(seen: unknown[], ac: AbortController, p: Promise<unknown>): Promise<void> {
  while (seen.length === 0) await sleep(10);
  ac.abort();
  const err = await caught(p);
  expect(err.code).toBe("E_ABORTED");
  expect(seen).toHaveLength(1);
}

describe("a cancel while waiting to retry", () => {
  it("ends a blob download's backoff at once, with E_ABORTED", async () => {
    const { data, digest } = blob(1 << 20);
    const store = storeWithPartial("abort-blob", digest, Buffer.alloc(0));
    const s = await servers.serve(true, (_req, res) => res.writeHead(503).end());
    // Backoffs of 30 s: far longer than the test may take.
    const c = new RegistryClient(s.host, { ca: tls.caCert }, { attempts: 5, baseMs: 30_000, maxMs: 30_000 });
    const ac = new AbortController();
    try {
      const p = fetchBlob(c, "a", { digest, size: data.length }, store, {
        limiter: new RateLimiter(0),
        signal: ac.signal,
      });
      await abortAfterFirstRequest(s.seen, ac, p);
    } finally {
      c.close();
    }
  }, 20_000);

  it("ends a manifest request's Retry-After wait at once, with E_ABORTED", async () => {
    const s = await servers.serve(true, (_req, res) => res.writeHead(503, { "retry-after": "600" }).end());
    const c = new RegistryClient(s.host, { ca: tls.caCert }, { attempts: 5 });
    const ac = new AbortController();
    try {
      const p = c.request("GET", "/v2/a/manifests/1", { scope: "repository:a:pull", signal: ac.signal });
      await abortAfterFirstRequest(s.seen, ac, p);
    } finally {
      c.close();
    }
  }, 20_000);
});

describe("a cancel while waiting for another download of the blob", () => {
  it("ends the wait for the ingest lock at once, with E_ABORTED", async () => {
    const { data, digest } = blob(1 << 20);
    const store = storeWithPartial("abort-lock", digest, Buffer.alloc(0));
    const release = await store.lockIngest(digest);
    const s = await servers.serve(true, (_req, res) => res.writeHead(200).end(data));
    const c = new RegistryClient(s.host, { ca: tls.caCert });
    const ac = new AbortController();
    try {
      const p = fetchBlob(c, "a", { digest, size: data.length }, store, {
        limiter: new RateLimiter(0),
        signal: ac.signal,
      });
      await sleep(50);
      ac.abort();
      const err = await caught(p);
      expect(err.code).toBe("E_ABORTED");
      expect(s.seen).toHaveLength(0);
    } finally {
      release();
      c.close();
    }
  });
});

describe("a cancel mid-body", () => {
  it("closes the connection the body came on and keeps what arrived for a resume", async () => {
    const { data, digest } = blob(4 << 20);
    const store = storeWithPartial("abort-body", digest, Buffer.alloc(0));
    let closed = false;
    let halfSent = false;
    const s = await servers.serve(true, (req, res) => {
      req.socket.once("close", () => {
        closed = true;
      });
      res.writeHead(200, { "content-length": String(data.length) });
      // Half the blob, then nothing more: the connection stays open until the client lets it go.
      res.write(data.subarray(0, 2 << 20), () => {
        halfSent = true;
      });
    });
    const c = new RegistryClient(s.host, { ca: tls.caCert });
    const ac = new AbortController();
    try {
      let received = 0;
      const p = fetchBlob(c, "a", { digest, size: data.length }, store, {
        limiter: new RateLimiter(0),
        signal: ac.signal,
        onBytes: (n) => {
          received += n;
        },
      });
      // Bytes are on disk as they arrive (in writes of at most 256 KiB), and reported within 200 ms.
      while (!halfSent || received < 1 << 20) await sleep(10);
      ac.abort();
      const err = await caught(p);
      expect(err.code).toBe("E_ABORTED");
      while (!closed) await sleep(10);
      const partial = join(work, "abort-body", "ingest", `${digest.slice(7)}.partial`);
      // Whatever arrived is written before the error goes up: a resume fetches none of it again.
      const kept = readFileSync(partial);
      expect(kept.length).toBeGreaterThanOrEqual(1 << 20);
      expect(kept.equals(data.subarray(0, kept.length))).toBe(true);
      expect(store.has(digest)).toBe(false);
    } finally {
      c.close();
    }
  }, 20_000);
});
