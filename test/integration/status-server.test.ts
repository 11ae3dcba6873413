/** The local status endpoint over real HTTP: TCP, the unix socket, and the page in a real headless chromium. */
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderMetrics } from "../../agent/api/metrics.js";
import { type StatusServer, type StatusSource, startStatusServer } from "../../agent/api/status-server.js";
import { FleetError } from "../../agent/errors.js";
import { type AgentMetrics, type ReportedState, reportedState } from "../../schemas/reported.js";

const CHROMIUM = "/usr/bin/chromium";
const TOKEN = "tok-8f2c4e";

function makeState(): ReportedState {
  const svc = {
    image: "registry.local:5000/acme/web@sha256:abc",
    restarts: 0,
    health: "healthy",
    memoryBytes: 64 * 1048576,
    cpuSeconds: 1.25,
  } as const;
  return {
    deviceId: "dev-001",
    deployment: "web-2026-11-28.1",
    generation: 12,
    phase: "converged",
    services: {
      web: { ...svc, state: "running", pid: 4242 },
      "mqtt-bridge": { ...svc, state: "exited", health: "none", exitCode: 1 },
    },
    lastError: { code: "E_REGISTRY", message: "registry.local:5000 said <b>503</b>" },
    agent: { version: "0.1.0", uptimeSec: 93.5, cgroupMode: "unified" },
    ts: "2026-11-28T10:00:00.000Z",
  };
}

const METRICS: AgentMetrics = {
  pullBytesTotal: 123456,
  applyDurationsMs: [800, 4200, 70000],
  appliesTotal: 3,
  rollbacksTotal: 1,
};

/** A plain-object source that records what the server asked of it. */
function makeSource(state = makeState()) {
  const calls = { restarts: [] as string[], tails: [] as (number | undefined)[] };
  const requireService = (name: string) => {
    if (!(name in state.services)) throw new FleetError("E_NOT_FOUND", `no service named '${name}' on this device`);
  };
  const source: StatusSource = {
    reported: () => state,
    metrics: () => METRICS,
    logs: (name, tail) => {
      requireService(name);
      calls.tails.push(tail);
      const lines = ["one", "two", "three", "four"].map((l) => `${name} ${l}\n`);
      return lines.slice(tail === undefined ? 0 : lines.length - Math.min(tail, lines.length)).join("");
    },
    restart: async (name) => {
      requireService(name);
      calls.restarts.push(name);
    },
  };
  return { source, calls, state };
}

interface Target {
  port?: number;
  socketPath?: string;
}

function call(to: Target, method: string, path: string, headers: Record<string, string> = {}) {
  const where = to.socketPath ? { socketPath: to.socketPath } : { host: "127.0.0.1", port: to.port };
  return new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
    const req = request({ ...where, method, path, headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        body += chunk;
      });
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A strict reader of the text format: every line is HELP, TYPE or `name{labels} value` of a declared family. */
function parseExposition(text: string): { types: Map<string, string>; samples: Sample[] } {
  const help = new Map<string, string>();
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  if (!text.endsWith("\n")) throw new Error("exposition does not end with a newline");
  for (const line of text.slice(0, -1).split("\n")) {
    const h = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (\S.*)$/.exec(line);
    const t = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (h || t) {
      const [map, m] = h ? [help, h] : [types, t!];
      if (map.has(m[1]!)) throw new Error(`duplicate comment line: ${line}`);
      map.set(m[1]!, m[2]!);
      continue;
    }
    const s = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ((?:[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?)|NaN|[+-]Inf)$/.exec(line);
    if (!s) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)/y;
    for (const src = s[2] ?? ""; pair.lastIndex < src.length; ) {
      const p = pair.exec(src);
      if (!p) throw new Error(`bad labels in ${JSON.stringify(line)}`);
      labels[p[1]!] = p[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    const base = s[1]!.replace(/_(bucket|sum|count)$/, "");
    const family = types.get(s[1]!) ? s[1]! : base;
    if (!types.has(family) || !help.has(family)) throw new Error(`sample ${s[1]} has no HELP and TYPE before it`);
    if (family !== s[1] && !["histogram", "summary"].includes(types.get(family)!))
      throw new Error(`${s[1]}: a suffix on a ${types.get(family)}`);
    samples.push({ name: s[1]!, labels, value: Number(s[3]!.replace("Inf", "Infinity")) });
  }
  return { types, samples };
}

async function dumpDom(url: string): Promise<string> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing, so the status page cannot be checked in a browser: apt-get install chromium (scripts/bootstrap.sh does)`,
    );
  }
  const profile = mkdtempSync(join(tmpdir(), "fleetlet-chromium-"));
  const flags = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ];
  // The virtual time budget fast-forwards the page's 2 s refresh timer and waits for its fetch.
  const args = [
    ...flags,
    "--no-first-run",
    "--disable-dev-shm-usage",
    `--user-data-dir=${profile}`,
    "--virtual-time-budget=5000",
    "--dump-dom",
    url,
  ];
  try {
    const { stdout } = await promisify(execFile)(CHROMIUM, args, { timeout: 60_000, maxBuffer: 16 << 20 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`chromium could not render ${url}: ${e.message}\n${e.stderr ?? ""}`);
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

let work: string;
const main = makeSource();
let server: StatusServer;
let tcp: Target;
let unix: Target;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-api-"));
  server = await startStatusServer({
    listen: "127.0.0.1:0",
    socket: join(work, "run", "api.sock"),
    token: TOKEN,
    source: main.source,
  });
  tcp = { port: server.port! };
  unix = { socketPath: server.socketPath! };
});
afterAll(async () => {
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

describe.each([
  ["TCP", () => tcp],
  ["the unix socket", () => unix],
])("over %s", (_, to) => {
  it("serves the reported state as JSON that round-trips", async () => {
    const r = await call(to(), "GET", "/v1/status");
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/json");
    expect(reportedState.parse(JSON.parse(r.body))).toEqual(main.state);
  });

  it("answers /healthz with ok", async () => {
    expect(await call(to(), "GET", "/healthz")).toMatchObject({ status: 200, body: "ok" });
  });
});

describe("the unix socket", () => {
  it("is created with its directory and mode 0660", () => {
    expect(statSync(server.socketPath!).mode & 0o777).toBe(0o660);
  });

  it("replaces a stale socket file but refuses one that a live process answers on, or a regular file", async () => {
    const path = join(work, "stale", "api.sock");
    const live = await startStatusServer({ listen: "", socket: path, source: main.source });
    await expect(startStatusServer({ listen: "", socket: path, source: main.source })).rejects.toThrow(
      /in use by another process/,
    );
    // Moving the bound file away before close leaves a socket file nobody listens on: what a killed agent leaves.
    const dead = createServer().listen(join(work, "stale", "tmp.sock"));
    await new Promise((r) => dead.once("listening", r));
    await live.close();
    renameSync(join(work, "stale", "tmp.sock"), path);
    await new Promise((r) => dead.close(r));
    const again = await startStatusServer({ listen: "", socket: path, source: main.source });
    expect((await call({ socketPath: path }, "GET", "/healthz")).body).toBe("ok");
    await again.close();
    writeFileSync(path, "not a socket");
    await expect(startStatusServer({ listen: "", socket: path, source: main.source })).rejects.toThrow(
      /exists and is not a socket/,
    );
  });
});

describe("logs", () => {
  const auth = { authorization: `Bearer ${TOKEN}` };

  it("returns the last N lines as text", async () => {
    const r = await call(unix, "GET", "/v1/services/web/logs?tail=2");
    expect(r).toMatchObject({ status: 200, body: "web three\nweb four\n" });
    expect(r.headers["content-type"]).toBe("text/plain; charset=utf-8");
    expect((await call(unix, "GET", "/v1/services/web/logs")).body.split("\n")).toHaveLength(5);
    expect(main.calls.tails).toEqual([2, undefined]);
  });

  it("needs the bearer token over TCP (401 without it or with a wrong one), and none on the unix socket", async () => {
    main.calls.tails.length = 0;
    const none = await call(tcp, "GET", "/v1/services/web/logs");
    expect([none.status, JSON.parse(none.body).code, none.headers["www-authenticate"]]).toEqual([
      401,
      "E_UNAUTHORIZED",
      'Bearer realm="fleetlet"',
    ]);
    const wrong = await call(tcp, "GET", "/v1/services/web/logs", { authorization: `Bearer ${TOKEN}x` });
    expect(wrong.status).toBe(401);
    expect(main.calls.tails).toEqual([]);
    expect(await call(tcp, "GET", "/v1/services/web/logs?tail=1", auth)).toMatchObject({
      status: 200,
      body: "web four\n",
    });
    expect(await call(unix, "GET", "/v1/services/web/logs?tail=1")).toMatchObject({ status: 200, body: "web four\n" });
  });

  it("is refused over TCP with 403 naming the socket when no token is configured", async () => {
    const open = makeSource();
    const s = await startStatusServer({ listen: "127.0.0.1:0", source: open.source });
    try {
      const r = await call({ port: s.port! }, "GET", "/v1/services/web/logs");
      expect([r.status, JSON.parse(r.body).code, JSON.parse(r.body).message]).toEqual([
        403,
        "E_FORBIDDEN",
        expect.stringMatching(/reading logs over TCP is disabled \(the unix socket api.socket needs no token\)/),
      ]);
      expect(open.calls.tails).toEqual([]);
    } finally {
      await s.close();
    }
  });

  it("answers 404 naming an unknown service, and 400 for a bad tail", async () => {
    const r = await call(tcp, "GET", "/v1/services/nosuch/logs?tail=5", auth);
    expect(r.status).toBe(404);
    expect(JSON.parse(r.body)).toEqual({ code: "E_NOT_FOUND", message: expect.stringContaining("nosuch") });
    for (const bad of ["-1", "abc", "1.5", "99999999"]) {
      const b = await call(tcp, "GET", `/v1/services/web/logs?tail=${bad}`, auth);
      expect([b.status, JSON.parse(b.body).code, JSON.parse(b.body).message]).toEqual([
        400,
        "E_INVALID_ARGUMENT",
        expect.stringContaining(bad),
      ]);
    }
  });
});

describe("metrics", () => {
  it("is Prometheus text in which every sample has HELP and TYPE", async () => {
    const r = await call(tcp, "GET", "/metrics");
    expect(r.headers["content-type"]).toBe("text/plain; version=0.0.4; charset=utf-8");
    const { types, samples } = parseExposition(r.body);
    const value = (name: string, labels: Record<string, string> = {}) =>
      samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
    expect(value("fleetlet_info", { version: "0.1.0", device: "dev-001", cgroup_mode: "unified" })).toBe(1);
    expect(
      samples.filter((s) => s.name === "fleetlet_service_state" && s.labels.service === "web" && s.value === 1),
    ).toEqual([expect.objectContaining({ labels: { service: "web", state: "running" } })]);
    expect(value("fleetlet_service_memory_bytes", { service: "web" })).toBe(64 * 1048576);
    expect(value("fleetlet_service_cpu_seconds_total", { service: "web" })).toBe(1.25);
    expect(value("fleetlet_service_health", { service: "mqtt-bridge", health: "none" })).toBe(1);
    expect([
      value("fleetlet_pull_bytes_total"),
      value("fleetlet_applies_total"),
      value("fleetlet_rollbacks_total"),
    ]).toEqual([123456, 3, 1]);
    expect(value("fleetlet_agent_uptime_seconds")).toBe(93.5);
    expect(types.get("fleetlet_apply_duration_seconds")).toBe("histogram");
    expect([
      value("fleetlet_apply_duration_seconds_bucket", { le: "5" }),
      value("fleetlet_apply_duration_seconds_bucket", { le: "+Inf" }),
    ]).toEqual([2, 3]);
    expect([value("fleetlet_apply_duration_seconds_sum"), value("fleetlet_apply_duration_seconds_count")]).toEqual([
      75, 3,
    ]);
    expect(types.get("fleetlet_service_restarts_total")).toBe("counter");
  });

  it("escapes quotes, backslashes and newlines in label values", () => {
    const state = makeState();
    const odd = 'we"ird\\na\nme';
    state.services = { [odd]: state.services.web! };
    state.deviceId = 'dev "1"';
    const { samples } = parseExposition(renderMetrics(state, METRICS));
    expect(samples.find((s) => s.name === "fleetlet_service_memory_bytes")?.labels.service).toBe(odd);
    expect(samples.find((s) => s.name === "fleetlet_info")?.labels.device).toBe('dev "1"');
  });
});

describe("restart", () => {
  it("needs the bearer token: 401 without it or with a wrong one, 200 with it", async () => {
    const none = await call(tcp, "POST", "/v1/services/web/restart");
    expect([none.status, JSON.parse(none.body).code, none.headers["www-authenticate"]]).toEqual([
      401,
      "E_UNAUTHORIZED",
      'Bearer realm="fleetlet"',
    ]);
    const wrong = await call(tcp, "POST", "/v1/services/web/restart", { authorization: `Bearer ${TOKEN}x` });
    expect(wrong.status).toBe(401);
    expect(main.calls.restarts).toEqual([]);
    const right = await call(unix, "POST", "/v1/services/web/restart", { authorization: `Bearer ${TOKEN}` });
    expect([right.status, JSON.parse(right.body)]).toEqual([200, { restarted: "web" }]);
    expect(main.calls.restarts).toEqual(["web"]);
    const unknown = await call(tcp, "POST", "/v1/services/nosuch/restart", { authorization: `Bearer ${TOKEN}` });
    expect([unknown.status, JSON.parse(unknown.body).message]).toEqual([404, expect.stringContaining("nosuch")]);
  });

  it("is refused with 403 when no token is configured", async () => {
    const open = makeSource();
    const s = await startStatusServer({ listen: "127.0.0.1:0", source: open.source });
    try {
      const r = await call({ port: s.port! }, "POST", "/v1/services/web/restart", { authorization: "Bearer anything" });
      expect([r.status, JSON.parse(r.body).code, JSON.parse(r.body).message]).toEqual([
        403,
        "E_FORBIDDEN",
        expect.stringContaining("api.token must be set"),
      ]);
      expect(open.calls.restarts).toEqual([]);
    } finally {
      await s.close();
    }
  });
});

describe("errors", () => {
  it("answers 405 with Allow for a wrong method and 404 for an unknown path, as JSON", async () => {
    const r = await call(tcp, "POST", "/v1/status");
    expect([r.status, r.headers.allow, JSON.parse(r.body).code]).toEqual([405, "GET, HEAD", "E_METHOD_NOT_ALLOWED"]);
    const d = await call(tcp, "DELETE", "/v1/services/web/restart");
    expect([d.status, d.headers.allow]).toEqual([405, "POST"]);
    const n = await call(tcp, "GET", "/v2/nothing");
    expect([n.status, JSON.parse(n.body)]).toEqual([
      404,
      { code: "E_NOT_FOUND", message: "no such endpoint: /v2/nothing" },
    ]);
  });

  it("turns a failing source into 500 with the error's code and message and keeps serving", async () => {
    const broken: StatusSource = {
      ...main.source,
      reported: () => {
        throw new FleetError("E_RUNTIME", "db.json is unreadable");
      },
      logs: () => {
        throw new TypeError("cannot read the log");
      },
    };
    const s = await startStatusServer({ listen: "127.0.0.1:0", token: TOKEN, source: broken });
    try {
      const r = await call({ port: s.port! }, "GET", "/v1/status");
      expect([r.status, JSON.parse(r.body)]).toEqual([500, { code: "E_RUNTIME", message: "db.json is unreadable" }]);
      const l = await call({ port: s.port! }, "GET", "/v1/services/web/logs", { authorization: `Bearer ${TOKEN}` });
      expect([l.status, JSON.parse(l.body).code, JSON.parse(l.body).message]).toEqual([
        500,
        "E_INTERNAL",
        expect.stringContaining("cannot read the log"),
      ]);
      expect((await call({ port: s.port! }, "GET", "/healthz")).status).toBe(200);
    } finally {
      await s.close();
    }
  });
});

describe("the status page", () => {
  it("renders in headless chromium and refreshes itself from /v1/status", async () => {
    const page = makeSource();
    let served = 0;
    // Each read bumps the restart count, so a value above the first proves the page's script redrew the table.
    const source: StatusSource = {
      ...page.source,
      reported: () => ({
        ...page.state,
        services: { ...page.state.services, web: { ...page.state.services.web!, restarts: ++served } },
      }),
    };
    const s = await startStatusServer({ listen: "127.0.0.1:0", source });
    try {
      const first = await call({ port: s.port! }, "GET", "/");
      expect(first.headers["content-security-policy"]).toMatch(/script-src 'sha256-/);
      const dom = await dumpDom(`http://127.0.0.1:${s.port}/`);
      expect(dom).toContain("web-2026-11-28.1");
      expect(dom).toContain("mqtt-bridge");
      expect(dom).toMatch(/data-refreshed="2026-11-28T10:00:00.000Z"/);
      const row = /<tr><td>web<\/td>(.*?)<\/tr>/.exec(dom)?.[1];
      expect(row?.match(/<td[^>]*>([^<]*)<\/td>/g)?.map((c) => c.replace(/<[^>]+>/g, ""))).toEqual([
        "running",
        "healthy",
        expect.any(String),
        "64.0 MiB",
        "1.25 s",
      ]);
      expect(Number(/<td class="num">(\d+)<\/td>/.exec(row!)?.[1])).toBeGreaterThan(2);
      expect(dom).toContain("registry.local:5000 said &lt;b&gt;503&lt;/b&gt;");
    } finally {
      await s.close();
    }
  });
});
