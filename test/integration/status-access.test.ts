/**
 * Who may reach the status endpoint, and what happens when it cannot listen:
 * requests addressed to a name (DNS rebinding from a browser on the device)
 * are refused on TCP; a taken port or an unusable socket path is retried
 * until it binds; `fleetlet status` asks the unix socket first.
 */
import { once } from "node:events";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingHttpHeaders, request } from "node:http";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isAllowedHost } from "../../agent/api/host-header.js";
import { type StatusServer, type StatusSource, startStatusServer } from "../../agent/api/status-server.js";
import type { FleetError } from "../../agent/errors.js";
import type { ReportedState } from "../../schemas/reported.js";
import { runCli } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const TOKEN = "tok-rebind-5c1";
const STATE: ReportedState = {
  deviceId: "dev-access",
  deployment: "d-1",
  generation: 1,
  phase: "converged",
  services: {},
  lastError: null,
  agent: { version: "0.1.0", uptimeSec: 1, cgroupMode: "v2" },
  ts: "2026-11-28T10:00:00.000Z",
};
const restarts: string[] = [];
const source: StatusSource = {
  reported: () => STATE,
  metrics: () => ({ pullBytesTotal: 0, applyDurationsMs: [], appliesTotal: 0, rollbacksTotal: 0 }),
  logs: () => "a line\n",
  restart: async (name) => {
    restarts.push(name);
  },
};

interface Target {
  port?: number;
  socketPath?: string;
  host?: string;
}

/** One request; `Host` is whatever `headers.host` says (Node sends it as given). */
function call(to: Target, method: string, path: string, headers: Record<string, string> = {}) {
  const where = to.socketPath ? { socketPath: to.socketPath } : { host: to.host ?? "127.0.0.1", port: to.port };
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request({ ...where, method, path, headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        body += chunk;
      });
      res.on("end", () => resolve({ status: res.statusCode!, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

const ROUTES: [string, string][] = [
  ["GET", "/"],
  ["GET", "/healthz"],
  ["GET", "/v1/status"],
  ["GET", "/metrics"],
  ["GET", "/v1/services/web/logs"],
  ["POST", "/v1/services/web/restart"],
];
const auth = { authorization: `Bearer ${TOKEN}` };

let work: string;
let server: StatusServer;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-access-"));
  server = await startStatusServer({ listen: "127.0.0.1:0", socket: join(work, "api.sock"), token: TOKEN, source });
});

afterAll(async () => {
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

describe("the Host header", () => {
  it.each([
    ["127.0.0.1", true],
    ["127.0.0.1:7780", true],
    ["10.1.2.3:80", true],
    ["localhost", true],
    ["LocalHost:7780", true],
    ["[::1]", true],
    ["[::1]:7780", true],
    [undefined, false],
    ["", false],
    ["evil.example", false],
    ["evil.example:7780", false],
    ["localhost.evil.example:7780", false],
    ["127.0.0.1.nip.io:7780", false],
    ["::1", false],
    ["[evil.example]:7780", false],
    ["127.0.0.1:7780:1", false],
  ])("%s is allowed: %s", (host, allowed) => {
    expect(isAllowedHost(host)).toBe(allowed);
  });

  it("refuses a DNS-rebinding request on every route over TCP, with 421 and a clear body", async () => {
    for (const [method, path] of ROUTES) {
      const r = await call({ port: server.port! }, method, path, { ...auth, host: `evil.example:${server.port}` });
      expect([path, r.status, JSON.parse(r.body).code]).toEqual([path, 421, "E_HOST_NOT_ALLOWED"]);
      expect(JSON.parse(r.body).message).toMatch(
        /^Host 'evil.example:\d+': the status endpoint answers only requests addressed to an IP address or localhost/,
      );
    }
    expect(restarts).toEqual([]);
  });

  it("answers requests addressed to localhost, 127.0.0.1 and [::1] over TCP, and any Host on the socket", async () => {
    const port = server.port!;
    for (const host of [`localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`, "localhost"]) {
      for (const [method, path] of ROUTES) {
        const r = await call({ port }, method, path, { ...auth, host });
        expect([host, path, r.status]).toEqual([host, path, 200]);
      }
    }
    for (const [method, path] of ROUTES) {
      const r = await call({ socketPath: server.socketPath! }, method, path, { ...auth, host: "evil.example" });
      expect([path, r.status]).toEqual([path, 200]);
    }
  });
});

describe("a listener that cannot bind", () => {
  it("is retried until the port is free, and serves from then on", async () => {
    const taker = createServer().listen(0, "127.0.0.1");
    await once(taker, "listening");
    const port = (taker.address() as { port: number }).port;
    const failures: FleetError[] = [];
    const bound: string[] = [];
    const s = await startStatusServer({
      listen: `127.0.0.1:${port}`,
      source,
      retry: { onUnavailable: (_, e) => failures.push(e), onBound: (w) => bound.push(w), firstDelayMs: 100 },
    });
    try {
      expect(s.port).toBeUndefined();
      await waitFor("two failed attempts", () => failures.length >= 2);
      expect(failures[0]).toMatchObject({ code: "E_CONFLICT", message: expect.stringMatching(/EADDRINUSE/) });
      expect(bound).toEqual([]);
      await new Promise((r) => taker.close(r));
      await waitFor("the endpoint bound", () => bound.length === 1);
      expect(bound).toEqual([`127.0.0.1:${port}`]);
      expect(s.port).toBe(port);
      expect((await call({ port }, "GET", "/healthz")).body).toBe("ok");
    } finally {
      await s.close();
      taker.close();
    }
  });

  it("is retried while its socket path is unusable, while the TCP listener serves", async () => {
    const path = join(work, "blocked", "api.sock");
    mkdirSync(join(work, "blocked"));
    writeFileSync(path, "a regular file where the socket should be");
    const failures: string[] = [];
    const s = await startStatusServer({
      listen: "127.0.0.1:0",
      socket: path,
      source,
      retry: { onUnavailable: (_, e) => failures.push(e.message), onBound: () => undefined, firstDelayMs: 100 },
    });
    try {
      expect((await call({ port: s.port! }, "GET", "/healthz")).body).toBe("ok");
      await waitFor("a failed attempt", () => failures.length >= 1);
      expect(failures[0]).toMatch(/exists and is not a socket/);
      rmSync(path);
      await waitFor("the socket answers", () => call({ socketPath: path }, "GET", "/healthz").catch(() => undefined));
    } finally {
      await s.close();
    }
  });

  it("without retry fails the start, as before", async () => {
    const taker = createServer().listen(0, "127.0.0.1");
    await once(taker, "listening");
    const port = (taker.address() as { port: number }).port;
    try {
      await expect(startStatusServer({ listen: `127.0.0.1:${port}`, source })).rejects.toThrow(/EADDRINUSE/);
    } finally {
      taker.close();
    }
  });
});

/** A stand-in agent endpoint that records each request's headers. */
async function recorder(listen: { port: number } | { path: string }) {
  const seen: IncomingHttpHeaders[] = [];
  const http = createHttpServer((req, res) => {
    seen.push(req.headers);
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(STATE));
  });
  http.listen("port" in listen ? { port: listen.port, host: "127.0.0.1" } : { path: listen.path });
  await once(http, "listening");
  return { seen, close: () => new Promise((r) => http.close(r)) };
}

describe("fleetlet status", () => {
  let root: string;
  beforeAll(() => {
    root = freshRoot();
  });
  afterAll(async () => {
    await cleanupRoot(root);
  });

  const status = async (api: Record<string, string>) => {
    const config = join(work, `status-${Date.now()}.json`);
    writeFileSync(config, JSON.stringify({ deviceId: "dev-access", api }));
    return runCli("fleetlet", ["--root", root, "--config", config, "status", "--json"], { timeoutMs: 30_000 });
  };

  it("reads the unix socket, with the token, when api.listen is empty or its port is held by someone else", async () => {
    const socket = join(work, "cli.sock");
    const agent = await recorder({ path: socket });
    // Whatever holds the TCP port (here: accepts and never answers) is never asked.
    const squatter: Server = createServer(() => undefined).listen(0, "127.0.0.1");
    await once(squatter, "listening");
    try {
      const none = await status({ listen: "", socket, token: TOKEN });
      expect([none.status, JSON.parse(none.stdout || "{}").deviceId], none.stderr).toEqual([0, "dev-access"]);
      const port = (squatter.address() as { port: number }).port;
      const held = await status({ listen: `127.0.0.1:${port}`, socket, token: TOKEN });
      expect(held.status, held.stderr).toBe(0);
      expect(agent.seen.map((h) => h.authorization)).toEqual([`Bearer ${TOKEN}`, `Bearer ${TOKEN}`]);
    } finally {
      squatter.close();
      await agent.close();
    }
  });

  it("falls back to TCP when the socket is not there, without sending the token over TCP", async () => {
    const port = await freePort();
    const agent = await recorder({ port });
    try {
      const r = await status({ listen: `127.0.0.1:${port}`, socket: join(work, "nosuch.sock"), token: TOKEN });
      expect([r.status, JSON.parse(r.stdout || "{}").deployment], r.stderr).toEqual([0, "d-1"]);
      expect(agent.seen).toHaveLength(1);
      expect(agent.seen[0]!.authorization).toBeUndefined();
      expect(agent.seen[0]!.host).toBe(`127.0.0.1:${port}`);
    } finally {
      await agent.close();
    }
  });

  it("names both places when no agent answers on either", async () => {
    const port = await freePort();
    const r = await status({ listen: `127.0.0.1:${port}`, socket: join(work, "nosuch.sock") });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/no agent answers on .*nosuch\.sock .*ENOENT.* or 127\.0\.0\.1:\d+ .*ECONNREFUSED/);
  });
});
