/**
 * The native blob connections' clocks and interim answers (blob-http.ts),
 * against HTTPS servers of the test's own, with timeouts short enough for a
 * test: a server that never answers, one that trickles its head a byte at a
 * time, a body that stops half way, a 103 before the real answer, and a
 * name whose first address does not answer. A stalled link must read as a
 * link that may come back (retried), never as an untrusted certificate.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlobHttp } from "../../agent/registry/blob-http.js";
import { RegistryRetry } from "../../agent/registry/registry-retry.js";
import { loadNative } from "../../agent/system/native.js";
import { HostileServers, type Served } from "../support/hostile-server.js";
import { makeTls, type TlsFiles } from "../support/registry.js";

const native = loadNative().core;
let work: string;
let tls: TlsFiles;
let servers: HostileServers;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-blob-http-timeouts-"));
  tls = await makeTls(work);
  servers = new HostileServers(tls);
});

afterAll(() => {
  servers.close();
  rmSync(work, { recursive: true, force: true });
});

let last: Served;

/** An HTTPS server's blob URL; `last` is the server. */
async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<URL> {
  last = await servers.serve(true, handler);
  return new URL(`${last.origin}/v2/a/blobs/sha256:00`);
}

const blobHttp = (timeouts: { connectMs: number; responseMs: number; idleMs: number }) =>
  new BlobHttp(native, readFileSync(tls.caCert), "registries.test.ca", timeouts);

/** The error `p` rejects with, as the retry logic classifies it. */
async function classified(p: Promise<unknown>) {
  const err = (await p.then(
    () => undefined,
    (e: unknown) => e,
  )) as (Error & { code?: string }) | undefined;
  expect(err).toBeInstanceOf(Error);
  return { err: err!, fleet: new RegistryRetry("test").networkError("GET blob", err) };
}

describe("a registry that stops answering", () => {
  it("reads a server that never answers as a timeout, retried, not as an untrusted certificate", async () => {
    const url = await serve(() => undefined); // the TLS handshake completes; the request gets no answer
    const http = blobHttp({ connectMs: 2000, responseMs: 10_000, idleMs: 300 });
    try {
      const { err, fleet } = await classified(http.open(url, {}));
      expect(err.code).toBe("ETIMEDOUT");
      expect(err.message).not.toMatch(/TLS|SSL|certificate/);
      expect(fleet.code).toBe("E_REGISTRY_UNREACHABLE");
    } finally {
      http.close();
    }
  });

  it("reads a plain HTTP server that never answers as a timeout too", async () => {
    last = await servers.serve(false, () => undefined);
    const http = blobHttp({ connectMs: 2000, responseMs: 10_000, idleMs: 300 });
    try {
      const { err, fleet } = await classified(http.open(new URL(`${last.origin}/v2/a/blobs/sha256:00`), {}));
      expect(err.code).toBe("ETIMEDOUT");
      expect(fleet.code).toBe("E_REGISTRY_UNREACHABLE");
    } finally {
      http.close();
    }
  });

  it("cuts a head that trickles in a byte at a time once connect and answer time are spent", async () => {
    const url = await serve((req) => {
      req.socket.write("HTTP/1.1 200 OK\r\n");
      // Each byte comes well within the idle timeout; the head never ends.
      const drip = setInterval(() => req.socket.write("x"), 50);
      req.socket.once("close", () => clearInterval(drip));
    });
    const http = blobHttp({ connectMs: 200, responseMs: 300, idleMs: 5000 });
    try {
      const { err, fleet } = await classified(http.open(url, {}));
      expect(err.message).toBe("the registry's answer did not come within 500 ms");
      expect(fleet.code).toBe("E_REGISTRY_UNREACHABLE");
    } finally {
      http.close();
    }
  });

  it("stops a body that stalls half way with a timeout, keeping the bytes that came", async () => {
    const data = Buffer.alloc(256 << 10, 7);
    const url = await serve((_req, res) => {
      res.writeHead(200, { "content-length": String(data.length) });
      res.write(data.subarray(0, 100_000)); // and no more
    });
    const http = blobHttp({ connectMs: 2000, responseMs: 2000, idleMs: 300 });
    const fd = openSync(join(work, "stalled"), "w+");
    try {
      const answer = await http.open(url, {});
      expect(answer.status).toBe(200);
      let got = 0;
      let error: (Error & { code?: string }) | undefined;
      while (!error) {
        const r = await answer.body.receive(new native.BlobWriter(fd), got, data.length - got);
        got += r.bytes;
        error = r.error;
      }
      answer.body.destroy();
      expect(got).toBe(100_000);
      expect(error.code).toBe("ETIMEDOUT");
      expect(new RegistryRetry("test").networkError("GET blob", error).code).toBe("E_REGISTRY_UNREACHABLE");
    } finally {
      closeSync(fd);
      http.close();
    }
  });
});

describe("interim answers", () => {
  it("reads past a 103 Early Hints to the real answer, and keeps the connection for the next", async () => {
    const data = Buffer.from("the blob's bytes");
    let connections = 0;
    const url = await serve((_req, res) => {
      res.writeEarlyHints({ link: "</v2/>; rel=preload" });
      res.end(data);
    });
    last.server.on("secureConnection", () => connections++);
    const http = blobHttp({ connectMs: 2000, responseMs: 2000, idleMs: 2000 });
    try {
      for (const name of ["first", "second"]) {
        const answer = await http.open(url, {});
        expect(answer.status).toBe(200);
        const fd = openSync(join(work, name), "w+");
        const r = await answer.body.receive(new native.BlobWriter(fd), 0, 64);
        closeSync(fd);
        answer.body.destroy();
        expect(r).toEqual({ bytes: data.length, end: true });
        expect(readFileSync(join(work, name)).equals(data)).toBe(true);
      }
      expect(connections).toBe(1);
    } finally {
      http.close();
    }
  });
});

/**
 * Listeners on each of `hosts` at `port` that take no connection: their
 * process is stopped and each queue (backlog 1) filled, so the kernel drops
 * every SYN that follows, as a broken route would: a connect there hangs.
 */
async function blackHoles(hosts: string[], port: number): Promise<() => void> {
  const listen = `const net = require("net"); let n = 0;
    for (const host of ${JSON.stringify(hosts)})
      net.createServer().listen({ host, port: ${port}, backlog: 1 }, () => ++n === ${hosts.length} && console.log("ready"));`;
  const child: ChildProcess = spawn(process.execPath, ["-e", listen], { stdio: ["ignore", "pipe", "inherit"] });
  await once(child.stdout!, "data");
  process.kill(child.pid!, "SIGSTOP");
  const fillers: Socket[] = [];
  for (const host of hosts) {
    for (let i = 0; i < 2; i++) {
      const s = connect({ host, port });
      fillers.push(s);
      await once(s, "connect");
    }
  }
  return () => {
    for (const s of fillers) s.destroy();
    child.kill("SIGKILL");
  };
}

describe("a name with more than one address", () => {
  const request = (port: number) => `GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;

  it("reaches the next address 250 ms after the first did not answer, not after the connect timeout", async () => {
    const s = await servers.serve(false, (_req, res) => res.end("ok"));
    const unplug = await blackHoles(["127.0.0.3"], s.port);
    const conn = new native.HttpConnection(`127.0.0.3 127.0.0.1`, s.port, "", null, 30_000, 5000);
    try {
      const t0 = Date.now();
      const head = await conn.exchange(request(s.port));
      expect(head).toMatch(/^HTTP\/1\.1 200 /);
      expect(Date.now() - t0).toBeLessThan(10_000); // tried in turn, it would wait out the 30 s connect timeout
      expect(s.seen).toHaveLength(1);
    } finally {
      conn.close();
      unplug();
    }
  });

  it("tries the families in turn: an IPv6 address after one IPv4 address that does not answer, not after all of them", async () => {
    const s = await servers.serve(false, (_req, res) => res.end("ok"), "::1");
    const v4 = [3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16].map((n) => `127.0.0.${n}`);
    const unplug = await blackHoles(v4, s.port);
    const conn = new native.HttpConnection([...v4, "::1"].join(" "), s.port, "", null, 30_000, 5000);
    try {
      const t0 = Date.now();
      expect(await conn.exchange(request(s.port))).toMatch(/^HTTP\/1\.1 200 /);
      // ::1 second, 250 ms in; in the order given it would come 13th, 3,000 ms in. The margin is for a loaded machine.
      expect(Date.now() - t0).toBeLessThan(2000);
    } finally {
      conn.close();
      unplug();
    }
  });

  it("goes on to the next address at once when the first refuses, and names the last failure when all do", async () => {
    const s = await servers.serve(false, (_req, res) => res.end("ok"));
    const conn = new native.HttpConnection(`127.0.0.4 127.0.0.1`, s.port, "", null, 30_000, 5000);
    const refused = new native.HttpConnection(`127.0.0.4 127.0.0.5`, s.port, "", null, 30_000, 5000);
    try {
      expect(await conn.exchange(request(s.port))).toMatch(/^HTTP\/1\.1 200 /);
      const err = await refused.exchange(request(s.port)).then(
        () => undefined,
        (e: Error & { errno?: number }) => e,
      );
      expect(err?.message).toMatch(/^connect to 127\.0\.0\.5: /);
      expect(new RegistryRetry("test").networkError("GET blob", err).code).toBe("E_REGISTRY_UNREACHABLE");
    } finally {
      conn.close();
      refused.close();
    }
  });

  it("gives up the race at once when the connection is closed", async () => {
    const s = await servers.serve(false, (_req, res) => res.end("ok"));
    const unplug = await blackHoles(["127.0.0.3"], s.port);
    const conn = new native.HttpConnection("127.0.0.3", s.port, "", null, 30_000, 5000);
    try {
      const pending = conn.exchange(request(s.port)).then(
        () => undefined,
        (e: Error) => e,
      );
      await new Promise((r) => setTimeout(r, 300));
      const t0 = Date.now();
      conn.close();
      const err = await pending;
      expect(err?.message).toBe("the connection was closed: Operation canceled");
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      unplug();
    }
  });
});

describe("TLS read-ahead", () => {
  /** The read(2) calls this process has made so far (TLS reads a socket with read, not recv). */
  const reads = () => Number(/^syscr: (\d+)$/m.exec(readFileSync("/proc/self/io", "utf8"))![1]);

  it("reads several TLS records per read(2), and a body that came at once in one receive", async () => {
    // Without read-ahead each record takes two reads, its 5-byte header and then its body (tls-trust.cc).
    const data = Buffer.alloc(4 << 20, 9);
    const records = data.length / 16384;
    const url = await serve((_req, res) => {
      res.writeHead(200, { "content-length": String(data.length) });
      res.end(data); // and the connection is kept
    });
    const http = blobHttp({ connectMs: 2000, responseMs: 2000, idleMs: 5000 });
    const fd = openSync(join(work, "read-ahead"), "w+");
    try {
      const answer = await http.open(url, {});
      const before = reads();
      const r = await answer.body.receive(new native.BlobWriter(fd), 0, data.length);
      const used = reads() - before;
      answer.body.destroy();
      expect(r).toEqual({ bytes: data.length, end: true });
      expect(readFileSync(join(work, "read-ahead")).equals(data)).toBe(true);
      // Measured: about 130 reads with read-ahead, 516 without (this process's server reads a few too).
      expect(used).toBeLessThan(records);
    } finally {
      closeSync(fd);
      http.close();
    }
  });
});
