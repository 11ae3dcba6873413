/**
 * Blob bodies over the native core's HTTP connections (blob-http.ts,
 * native/src/http-conn.h), against HTTPS servers of the test's own: every
 * framing a registry may use, the server's name checked against its
 * certificate, kept connections and TLS sessions reused, and answers that
 * are not HTTP at all.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
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
  work = mkdtempSync(join(tmpdir(), "fleetlet-blob-http-"));
  tls = await makeTls(work);
  servers = new HostileServers(tls);
});

afterAll(() => {
  servers.close();
  rmSync(work, { recursive: true, force: true });
});

/** An HTTPS server that also says, per TLS connection, whether it resumed an earlier session. */
async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void, address = "127.0.0.1") {
  const s = await servers.serve(true, handler, address);
  const resumed: boolean[] = [];
  s.server.on("secureConnection", (socket: TLSSocket) => resumed.push(socket.isSessionReused()));
  return { ...s, requests: s.seen, resumed };
}

const client = (host: string, attempts = 1) => new RegistryClient(host, { ca: tls.caCert }, { attempts, baseMs: 10 });

function storeAt(name: string): ContentStore {
  return new ContentStore(join(work, name), loadNative().core);
}

const stored = (name: string, digest: string) => readFileSync(join(work, name, "blobs", "sha256", digest.slice(7)));

describe("the framings a registry may send a body in", () => {
  it("stores a body sent in chunks (no Content-Length)", async () => {
    const { data, digest } = blob(3 << 20);
    const s = await serve((_req, res) => {
      res.writeHead(200);
      for (let at = 0; at < data.length; at += 100_000) res.write(data.subarray(at, at + 100_000));
      res.end();
    });
    const c = client(`127.0.0.1:${s.port}`);
    try {
      await fetchBlob(c, "a", { digest, size: data.length }, storeAt("chunked"), { limiter: new RateLimiter(0) });
      expect(s.requests[0]!.headers["transfer-encoding"]).toBeUndefined();
      expect(stored("chunked", digest).equals(data)).toBe(true);
    } finally {
      c.close();
    }
  });

  it("stores a body that ends with the connection (HTTP/1.0 style)", async () => {
    const { data, digest } = blob(1 << 20);
    const s = await serve((req) => {
      req.socket.write("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
      req.socket.end(data);
    });
    const c = client(`127.0.0.1:${s.port}`);
    try {
      await fetchBlob(c, "a", { digest, size: data.length }, storeAt("close"), { limiter: new RateLimiter(0) });
      expect(stored("close", digest).equals(data)).toBe(true);
    } finally {
      c.close();
    }
  });

  it("charges a capped download for the blob's bytes alone when its ranges come chunked", async () => {
    const { data, digest } = blob(1 << 20);
    const s = await serve((req, res) => {
      const [, from, to] = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? "") ?? [];
      res.writeHead(206, { "content-range": `bytes ${from}-${to}/${data.length}` }); // no length: chunked
      res.end(data.subarray(Number(from), Number(to) + 1));
    });
    const c = client(`127.0.0.1:${s.port}`);
    // 1 MiB/s: ranges of 256 KiB, so four of them.
    const limiter = new (class extends RateLimiter {
      taken = 0;
      override take(n: number, signal?: AbortSignal) {
        this.taken += n;
        return super.take(n, signal);
      }
    })(1 << 20);
    try {
      await fetchBlob(c, "a", { digest, size: data.length }, storeAt("chunked-ranges"), { limiter });
      expect(s.requests.map((r) => r.headers.range)).toHaveLength(4);
      expect(stored("chunked-ranges", digest).equals(data)).toBe(true);
      // Not a slice more for each range's last chunk: reading where a range ends costs the cap nothing.
      expect(limiter.taken).toBe(data.length);
    } finally {
      c.close();
    }
  });

  it("refuses a chunked body longer than the blob, storing nothing", async () => {
    const { data, digest } = blob(1 << 20);
    const s = await serve((_req, res) => {
      res.writeHead(200);
      res.write(data);
      res.end(Buffer.from("one chunk too many"));
    });
    const c = client(`127.0.0.1:${s.port}`);
    const store = storeAt("chunked-long");
    try {
      const err = await caught(
        fetchBlob(c, "a", { digest, size: data.length }, store, { limiter: new RateLimiter(0) }),
      );
      expect(err.code).toBe("E_DIGEST_MISMATCH");
      expect(err.message).toContain(`more than the ${data.length} bytes`);
      expect(store.has(digest)).toBe(false);
    } finally {
      c.close();
    }
  });

  it("refuses a head or a chunked trailer without end, instead of reading on", async () => {
    const { data, digest } = blob(4096);
    const endless = `${"x-filler: ".padEnd(1000, "a")}\r\n`.repeat(100); // 100 KB of header lines
    const heads = await serve((req) => req.socket.end(`HTTP/1.1 200 OK\r\n${endless}\r\n`));
    const trailers = await serve((req) => {
      req.socket.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
      req.socket.end(Buffer.concat([Buffer.from("1000\r\n"), data, Buffer.from(`\r\n0\r\n${endless}\r\n`)]));
    });
    for (const [s, what] of [
      [heads, "head is longer than 64 KiB"],
      [trailers, "trailer is longer than 64 KiB"],
    ] as const) {
      const c = client(`127.0.0.1:${s.port}`);
      try {
        const err = await caught(
          fetchBlob(c, "a", { digest, size: data.length }, storeAt(`endless-${s.port}`), {
            limiter: new RateLimiter(0),
          }),
        );
        expect(err.code).toBe("E_REGISTRY");
        expect(err.message).toContain(what);
      } finally {
        c.close();
      }
    }
  });

  it("refuses an answer that is not HTTP, naming what came", async () => {
    const { data, digest } = blob(1024);
    const s = await serve((req) => req.socket.end("SSH-2.0-OpenSSH_9.2\r\n\r\n"));
    const c = client(`127.0.0.1:${s.port}`);
    try {
      const err = await caught(
        fetchBlob(c, "a", { digest, size: data.length }, storeAt("not-http"), { limiter: new RateLimiter(0) }),
      );
      expect(err.code).toBe("E_REGISTRY");
      expect(err.message).toContain("not valid HTTP");
    } finally {
      c.close();
    }
  });
});

describe("a registry configured insecure (plain HTTP)", () => {
  it("stores a blob fetched over plain HTTP, in pieces and chunked", async () => {
    const { data, digest } = blob(3 << 20);
    const s = await servers.serve(false, (_req, res) => {
      res.writeHead(200);
      for (let at = 0; at < data.length; at += 300_000) res.write(data.subarray(at, at + 300_000));
      res.end();
    });
    const c = new RegistryClient(s.host, { insecure: true }, { attempts: 1 });
    try {
      await fetchBlob(c, "a", { digest, size: data.length }, storeAt("plain"), { limiter: new RateLimiter(0) });
      expect(s.seen).toHaveLength(1);
      expect(stored("plain", digest).equals(data)).toBe(true);
    } finally {
      c.close();
    }
  });
});

describe("the registry's name", () => {
  it("refuses a certificate that does not name the address asked for, sending it no request", async () => {
    const { data, digest } = blob(1024);
    // The test CA signed the certificate, for 127.0.0.1 and localhost: not for 127.0.0.2.
    const s = await serve((_req, res) => res.end(data), "127.0.0.2");
    const c = client(`127.0.0.2:${s.port}`);
    try {
      const err = await caught(
        fetchBlob(c, "a", { digest, size: data.length }, storeAt("alt-name"), { limiter: new RateLimiter(0) }),
      );
      expect(err.code).toBe("E_REGISTRY_TLS");
      expect(err.message).toContain("ERR_TLS_CERT_ALTNAME_INVALID");
      expect(s.requests).toHaveLength(0);
    } finally {
      c.close();
    }
  });

  it("sends the registry's host name as SNI and checks the certificate against it", async () => {
    const { data, digest } = blob(64 << 10);
    const names: (string | false | null)[] = [];
    const s = await serve((req, res) => {
      names.push((req.socket as TLSSocket).servername);
      res.end(data);
    });
    const c = client(`localhost:${s.port}`);
    try {
      await fetchBlob(c, "a", { digest, size: data.length }, storeAt("sni"), { limiter: new RateLimiter(0) });
      expect(names).toEqual(["localhost"]);
    } finally {
      c.close();
    }
  });
});

describe("connections and sessions", () => {
  it("goes on over a new connection when the registry closed the kept one meanwhile", async () => {
    const a = blob(256 << 10);
    const b = blob(256 << 10);
    const s = await serve((req, res) => res.end(req.url!.endsWith(a.digest) ? a.data : b.data));
    const c = client(`127.0.0.1:${s.port}`); // one attempt: only the connection's own reconnect may save it
    const store = storeAt("stale");
    try {
      await fetchBlob(c, "a", { digest: a.digest, size: a.data.length }, store, { limiter: new RateLimiter(0) });
      s.server.closeIdleConnections(); // as a registry's keep-alive timeout would
      await new Promise((resolve) => setTimeout(resolve, 100));
      await fetchBlob(c, "a", { digest: b.digest, size: b.data.length }, store, { limiter: new RateLimiter(0) });
      expect(store.has(b.digest)).toBe(true);
      expect(s.requests).toHaveLength(2);
      expect(s.resumed).toHaveLength(2);
    } finally {
      c.close();
    }
  });

  it("reuses a kept connection for the next blob, and resumes the TLS session on a new one", async () => {
    const blobs = [blob(128 << 10), blob(128 << 10), blob(128 << 10)];
    const s = await serve((req, res) => res.end(blobs.find((x) => req.url!.endsWith(x.digest))!.data));
    const c = client(`127.0.0.1:${s.port}`);
    const store = storeAt("sessions");
    const fetch = (i: number) =>
      fetchBlob(c, "a", { digest: blobs[i]!.digest, size: blobs[i]!.data.length }, store, {
        limiter: new RateLimiter(0),
      });
    try {
      await fetch(0);
      await fetch(1);
      expect(s.resumed).toEqual([false]); // the second blob came over the first one's connection
      c.close(); // the kept connection goes; the client's TLS sessions stay
      await fetch(2);
      expect(s.resumed).toEqual([false, true]);
      expect(s.requests).toHaveLength(3);
    } finally {
      c.close();
    }
  });
});

describe("progress", () => {
  it("reports the bytes of a body that trickles in before the body is over", async () => {
    const { data, digest } = blob(1 << 20);
    let reported = 0;
    let progressSeen: () => void = () => undefined;
    const progress = new Promise<void>((resolve) => {
      progressSeen = resolve;
    });
    const s = await serve((_req, res) => {
      res.writeHead(200, { "content-length": String(data.length) });
      // 64 KiB, then the rest only once the client said it has them: a receive that waited for its whole
      // step before saying anything would wait here for ever.
      res.write(data.subarray(0, 64 << 10));
      void progress.then(() => res.end(data.subarray(64 << 10)));
    });
    const c = client(`127.0.0.1:${s.port}`);
    try {
      await fetchBlob(c, "a", { digest, size: data.length }, storeAt("trickle"), {
        limiter: new RateLimiter(0),
        onBytes: (n) => {
          reported += n;
          if (reported >= 64 << 10) progressSeen();
        },
      });
      expect(reported).toBe(data.length);
    } finally {
      c.close();
    }
  }, 20_000);
});
