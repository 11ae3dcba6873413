/**
 * A registry client against a hostile HTTPS server of the test's own (signed
 * by a CA the client is configured with): redirects that downgrade to plain
 * HTTP, token services that stream without end or live on plain HTTP, error
 * bodies without end. Credentials must never travel in clear, and no answer
 * may make the client hold more than its caps in memory.
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import type { ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../agent/registry/registry-client.js";
import { RegistryHttp } from "../../agent/registry/registry-http.js";
import { loadNative } from "../../agent/system/native.js";
import { type Handler, HostileServers } from "../support/hostile-server.js";
import { makeTls, type TlsFiles } from "../support/registry.js";
import { caught } from "../support/test-blobs.js";

const ENDLESS_BYTES = 256 << 20;

let work: string;
let tls: TlsFiles;
let servers: HostileServers;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-hostile-registry-"));
  tls = await makeTls(work);
  servers = new HostileServers(tls);
});

afterAll(async () => {
  servers.close();
  rmSync(work, { recursive: true, force: true });
});

const serve = (secure: boolean, handler: Handler) => servers.serve(secure, handler);

/** Streams spaces (256 MiB, far past any cap) until the client goes away; counts what it sent. */
function endless(res: ServerResponse, sent: { bytes: number }, headers: Record<string, string> = {}): void {
  res.writeHead(200, { "content-type": "application/json", ...headers });
  const chunk = Buffer.alloc(64 << 10, 0x20);
  const pump = () => {
    while (!res.destroyed && sent.bytes < ENDLESS_BYTES) {
      sent.bytes += chunk.length;
      if (!res.write(chunk)) return void res.once("drain", pump);
    }
    res.end();
  };
  pump();
}

const creds = () => ({ username: "alice", password: "s3cret", ca: tls.caCert });
const basicAlice = `Basic ${Buffer.from("alice:s3cret").toString("base64")}`;

describe("redirects", () => {
  it("refuses a blob redirect from https down to plain http, and sends it nothing", async () => {
    const plain = await serve(false, (_req, res) => res.end("blob bytes"));
    const reg = await serve(true, (req, res) => {
      if (!req.headers.authorization) {
        res.writeHead(401, { "www-authenticate": 'Basic realm="r"' }).end();
        return;
      }
      res.writeHead(307, { location: `${plain.origin}/storage/blob` }).end();
    });
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const err = await caught(client.openBlob("/v2/a/blobs/sha256:00", { scope: "repository:a:pull" }));
      expect(err.code).toBe("E_REGISTRY");
      expect(err.message).toContain("http:");
      expect(plain.seen).toHaveLength(0);
    } finally {
      client.close();
    }
  });

  it("refuses a buffered (manifest) redirect from https down to plain http", async () => {
    const plain = await serve(false, (_req, res) => res.end("{}"));
    const reg = await serve(true, (_req, res) => {
      res.writeHead(302, { location: `${plain.origin}/m` }).end();
    });
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const err = await caught(client.request("GET", "/v2/a/manifests/1", { scope: "repository:a:pull" }));
      expect(err.code).toBe("E_REGISTRY");
      expect(plain.seen).toHaveLength(0);
    } finally {
      client.close();
    }
  });

  it("still follows an https redirect to another host, without the Authorization header", async () => {
    const storage = await serve(true, (_req, res) => res.end("blob bytes"));
    const reg = await serve(true, (req, res) => {
      if (!req.headers.authorization) {
        res.writeHead(401, { "www-authenticate": 'Basic realm="r"' }).end();
        return;
      }
      res.writeHead(307, { location: `${storage.origin}/storage/blob?sig=1` }).end();
    });
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const res = await client.openBlob("/v2/a/blobs/sha256:00", { scope: "repository:a:pull" });
      const file = join(work, "redirected-blob");
      const fd = openSync(file, "w+");
      try {
        const got = await res.body.receive(new (loadNative().core.BlobWriter)(fd), 0, 64);
        expect(got).toEqual({ bytes: 10, end: true });
      } finally {
        res.body.destroy();
        closeSync(fd);
      }
      expect(readFileSync(file, "utf8")).toBe("blob bytes");
      expect(reg.seen.at(-1)?.headers.authorization).toBe(basicAlice);
      expect(storage.seen).toHaveLength(1);
      expect(storage.seen[0]!.headers.authorization).toBeUndefined();
    } finally {
      client.close();
    }
  });
});

describe("tokens", () => {
  it("never sends the credentials to a token realm on plain http when the registry is https", async () => {
    const realm = await serve(false, (_req, res) => res.end(JSON.stringify({ token: "t" })));
    const reg = await serve(true, (_req, res) => {
      res.writeHead(401, { "www-authenticate": `Bearer realm="${realm.origin}/token",service="s"` }).end();
    });
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const err = await caught(client.request("GET", "/v2/a/manifests/1", { scope: "repository:a:pull" }));
      expect(err.code).toBe("E_REGISTRY_AUTH");
      expect(err.message).toContain(realm.origin);
      expect(realm.seen).toHaveLength(0);
    } finally {
      client.close();
    }
  });

  it("refuses a token answer past its cap instead of buffering a body without end", async () => {
    const sent = { bytes: 0 };
    const tokens = await serve(true, (_req, res) => endless(res, sent));
    const reg = await serve(true, (_req, res) => {
      res.writeHead(401, { "www-authenticate": `Bearer realm="${tokens.origin}/token",service="s"` }).end();
    });
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const err = await caught(client.request("GET", "/v2/a/manifests/1", { scope: "repository:a:pull" }));
      expect(err.message).toContain("bytes allowed");
      expect(err.code).toBe("E_REGISTRY");
      // Cut off long before the server's 256 MiB: the cap, plus what was in flight.
      expect(sent.bytes).toBeLessThan(64 << 20);
    } finally {
      client.close();
    }
  });

  it("refuses an error body past its cap (a reply the caller set no cap for)", async () => {
    const sent = { bytes: 0 };
    const reg = await serve(true, (_req, res) => endless(res, sent));
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const err = await caught(client.request("POST", "/v2/a/blobs/uploads/", { scope: "repository:a:pull,push" }));
      expect(err.message).toContain("bytes allowed");
      expect(err.code).toBe("E_REGISTRY");
      expect(sent.bytes).toBeLessThan(64 << 20);
    } finally {
      client.close();
    }
  });
});

describe("challenges from elsewhere", () => {
  it("does not answer a 401 from the storage a blob was redirected to: no credentials go to its realm", async () => {
    const storage = await serve(true, (req, res) => {
      if (req.url?.startsWith("/token")) return void res.end(JSON.stringify({ token: "t" }));
      res.writeHead(401, { "www-authenticate": `Bearer realm="https://${req.headers.host}/token",service="s"` }).end();
    });
    // An anonymous registry: the storage's 401 is the first challenge the client meets.
    const reg = await serve(true, (_req, res) => {
      res.writeHead(307, { location: `${storage.origin}/storage/blob` }).end();
    });
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const err = await caught(client.openBlob("/v2/a/blobs/sha256:00", { scope: "repository:a:pull" }));
      expect(err.code).toBe("E_REGISTRY_AUTH");
      expect(storage.seen.length).toBeGreaterThan(0);
      expect(storage.seen.map((r) => r.headers.authorization)).toEqual(storage.seen.map(() => undefined));
      expect(storage.seen.some((r) => r.url?.startsWith("/token"))).toBe(false);
    } finally {
      client.close();
    }
  });

  it("does not answer a 401 from the host a manifest was redirected to either", async () => {
    const storage = await serve(true, (req, res) => {
      if (req.url?.startsWith("/token")) return void res.end(JSON.stringify({ token: "t" }));
      res.writeHead(401, { "www-authenticate": `Bearer realm="https://${req.headers.host}/token",service="s"` }).end();
    });
    // An anonymous registry: the storage's 401 is the first challenge the client meets.
    const reg = await serve(true, (_req, res) => {
      res.writeHead(307, { location: `${storage.origin}/m` }).end();
    });
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const err = await caught(client.request("GET", "/v2/a/manifests/1", { scope: "repository:a:pull" }));
      expect(err.code).toBe("E_REGISTRY_AUTH");
      expect(storage.seen.some((r) => r.url?.startsWith("/token"))).toBe(false);
      expect(storage.seen.every((r) => r.headers.authorization === undefined)).toBe(true);
    } finally {
      client.close();
    }
  });
});

describe("timeouts", () => {
  it("gives an upload slower than the answer timeout its time: that timer runs from the request's last byte", async () => {
    const reg = await serve(true, (req, res) => {
      let got = 0;
      req.on("data", (c: Buffer) => {
        got += c.length;
      });
      req.on("end", () => res.writeHead(201, { "x-got": String(got) }).end());
    });
    // An upload of 6 pieces a second apart, against an answer timeout of 2 s and an idle one of 4 s.
    const http = new RegistryHttp(readFileSync(tls.caCert), { responseMs: 2000, idleMs: 4000 });
    async function* slow() {
      for (let i = 0; i < 6; i++) {
        yield Buffer.alloc(1000, i);
        await sleep(1000);
      }
    }
    try {
      const url = new URL(`${reg.origin}/v2/a/blobs/uploads/x`);
      const res = await http.buffered(url, {
        method: "PATCH",
        headers: { "content-length": "6000" },
        body: Readable.from(slow()),
      });
      expect(res.statusCode).toBe(201);
      expect(res.headers["x-got"]).toBe("6000");
    } finally {
      http.close();
    }
  });

  it("still cuts a request whose answer does not come", async () => {
    const reg = await serve(true, () => undefined);
    const http = new RegistryHttp(readFileSync(tls.caCert), { responseMs: 500, idleMs: 60_000 });
    try {
      const err = await http.buffered(new URL(`${reg.origin}/v2/`), { method: "GET", headers: {} }).then(
        () => undefined,
        (e: unknown) => e as NodeJS.ErrnoException,
      );
      expect(err?.code).toBe("ETIMEDOUT");
    } finally {
      http.close();
    }
  });
});

describe("a registry that refuses every token", () => {
  it("fetches one new token on a 401, then gives up with E_REGISTRY_AUTH instead of asking forever", async () => {
    const tokens = await serve(true, (_req, res) => res.end(JSON.stringify({ token: "t", expires_in: 300 })));
    const reg = await serve(true, (_req, res) => {
      res.writeHead(401, { "www-authenticate": `Bearer realm="${tokens.origin}/token",service="s"` }).end();
    });
    const client = new RegistryClient(reg.host, creds(), { attempts: 1 });
    try {
      const err = await caught(client.request("GET", "/v2/a/manifests/1", { scope: "repository:a:pull" }));
      expect(err.code).toBe("E_REGISTRY_AUTH");
      expect(tokens.seen).toHaveLength(1);
      expect(reg.seen.map((r) => r.headers.authorization)).toEqual([undefined, "Bearer t"]);
      // The next request has a cached token the registry refuses: it is refreshed once, no more.
      const again = await caught(client.request("GET", "/v2/a/manifests/1", { scope: "repository:a:pull" }));
      expect(again.code).toBe("E_REGISTRY_AUTH");
      expect(tokens.seen).toHaveLength(2);
      expect(reg.seen).toHaveLength(4);
    } finally {
      client.close();
    }
  });
});

describe("TLS", () => {
  it("refuses a registry whose certificate the configured CA did not sign, sending it no request", async () => {
    const reg = await serve(true, (_req, res) => res.end("{}"));
    // The CA of another test run: a well-formed bundle that did not sign this server's certificate.
    const other = await makeTls(mkdtempSync(join(work, "other-ca-")));
    const client = new RegistryClient(reg.host, { ...creds(), ca: other.caCert }, { attempts: 1 });
    try {
      const err = await caught(client.request("GET", "/v2/", { scope: "" }));
      expect(err.code).toBe("E_REGISTRY_TLS");
      expect(reg.seen).toHaveLength(0);
    } finally {
      client.close();
    }
  });
});
