/**
 * A blob download that fills the disk: the ingest's write fails with
 * ENOSPC, which must come up as E_NO_SPACE naming the partial's path, at
 * once (not retried as if the registry were unreachable), and the blob is
 * never stored. The store lives on a 1 MiB tmpfs of the test's own.
 */
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import { createServer } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fetchBlob } from "../../agent/registry/blob-fetch.js";
import { RateLimiter } from "../../agent/registry/rate-limit.js";
import { RegistryClient } from "../../agent/registry/registry-client.js";
import { ContentStore } from "../../agent/store/content-store.js";
import { loadNative } from "../../agent/system/native.js";
import { makeTls } from "../support/registry.js";
import { randomBlob as blob, caught } from "../support/test-blobs.js";

const work = mkdtempSync(join(tmpdir(), "fleetlet-disk-full-"));
const small = join(work, "small");
let store: ContentStore;

beforeAll(() => {
  execFileSync("mkdir", ["-p", small]);
  execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", small]);
  store = new ContentStore(small, loadNative().core);
});

afterAll(() => {
  execFileSync("umount", [small]);
  rmSync(work, { recursive: true, force: true });
});

describe("a full disk under an ingest", () => {
  it("fails the write with E_NO_SPACE naming the partial", async () => {
    const { data, digest } = blob(2 << 20);
    const ingest = await store.openIngest(digest, data.length);
    try {
      const err = await caught(ingest.writeMany([data], data.length));
      expect(err.code).toBe("E_NO_SPACE");
      expect(err.message).toContain(join(small, "ingest"));
      expect(err.message).toContain("ENOSPC");
    } finally {
      await ingest.close();
      // The partial stays for a resume; this test's is removed so the next one has the room back.
      for (const [, path] of store.partials()) rmSync(path);
    }
    expect(store.has(digest)).toBe(false);
  });

  it("fails a download at once with E_NO_SPACE, without retrying it as a network error", async () => {
    const { data, digest } = blob(3 << 20);
    const tls = await makeTls(work);
    const seen: IncomingMessage[] = [];
    const server = createServer(
      { cert: readFileSync(tls.serverCert), key: readFileSync(tls.serverKey) },
      (req, res) => {
        seen.push(req);
        res.writeHead(200, { "content-length": String(data.length) }).end(data);
      },
    );
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as { port: number };
    const client = new RegistryClient(`127.0.0.1:${port}`, { ca: tls.caCert }, { attempts: 3, baseMs: 10, maxMs: 20 });
    try {
      const opts = { limiter: new RateLimiter(0) };
      const err = await caught(fetchBlob(client, "a", { digest, size: data.length }, store, opts));
      expect(err.code).toBe("E_NO_SPACE");
      expect(err.message).toContain(join(small, "ingest"));
      expect(seen).toHaveLength(1);
      expect(store.has(digest)).toBe(false);
    } finally {
      client.close();
      server.closeAllConnections();
      server.close();
    }
  });
});
