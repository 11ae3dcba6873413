/**
 * The local status endpoint (docs/contract.md, "Local status endpoint"): plain
 * node:http on loopback TCP and on a unix socket, the same routes on both.
 * Reads are open to anyone who can reach it; anything that changes state
 * needs `Authorization: Bearer <api.token>`, and with no token configured
 * such calls are refused outright rather than left open.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, ListenOptions } from "node:net";
import { connect } from "node:net";
import { dirname } from "node:path";
import type { AgentMetrics, ReportedState } from "../../schemas/reported.js";
import { type ErrorCode, FleetError, isErrno } from "../errors.js";
import { METRICS_CONTENT_TYPE, renderMetrics } from "./metrics.js";
import { renderStatusPage, STATUS_PAGE_CSP } from "./status-page.js";

export interface StatusSource {
  reported(): ReportedState;
  metrics(): AgentMetrics;
  /** The service's log tail; throws FleetError("E_NOT_FOUND", ...) for an unknown service. */
  logs(service: string, tail: number | undefined): string;
  /** Restarts one service; throws FleetError E_NOT_FOUND for an unknown one. */
  restart(service: string): Promise<void>;
}

export interface StatusServer {
  port: number | undefined;
  socketPath: string | undefined;
  close(): Promise<void>;
}

export interface StatusServerOptions {
  /** "HOST:PORT" ("[::1]:7780" for IPv6); port 0 picks a free port; "" turns TCP off. Default 127.0.0.1:7780. */
  listen?: string;
  /** A unix socket path; its directory is created and a stale socket file replaced. */
  socket?: string;
  /** The bearer token for state-changing calls; without one they all get 403. */
  token?: string;
  source: StatusSource;
}

const DEFAULT_LISTEN = "127.0.0.1:7780";
const MAX_TAIL = 1_000_000;

/** Codes of refusals that come from the endpoint itself rather than from the agent. */
type ApiCode = ErrorCode;

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiCode,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

interface Reply {
  status: number;
  type: string;
  body: string;
  headers?: Record<string, string>;
}

interface RequestContext {
  req: IncomingMessage;
  service: string;
  query: URLSearchParams;
  opts: StatusServerOptions;
}

type Handler = (ctx: RequestContext) => Reply | Promise<Reply>;

interface Route {
  /** Matched against the raw path; group 1, when present, is the service name (still percent-encoded). */
  pattern: RegExp;
  get?: Handler;
  post?: Handler;
}

const json = (status: number, value: unknown): Reply => ({
  status,
  type: "application/json",
  body: `${JSON.stringify(value)}\n`,
});
const text = (body: string, type = "text/plain; charset=utf-8"): Reply => ({ status: 200, type, body });

const ROUTES: Route[] = [
  {
    pattern: /^\/$/,
    get: (c) => ({
      ...text(renderStatusPage(c.opts.source.reported()), "text/html; charset=utf-8"),
      headers: { "content-security-policy": STATUS_PAGE_CSP },
    }),
  },
  { pattern: /^\/healthz$/, get: () => text("ok") },
  { pattern: /^\/v1\/status$/, get: (c) => json(200, c.opts.source.reported()) },
  {
    pattern: /^\/metrics$/,
    get: (c) => text(renderMetrics(c.opts.source.reported(), c.opts.source.metrics()), METRICS_CONTENT_TYPE),
  },
  {
    pattern: /^\/v1\/services\/([^/]+)\/logs$/,
    get: (c) => text(c.opts.source.logs(c.service, parseTail(c.query.get("tail")))),
  },
  { pattern: /^\/v1\/services\/([^/]+)\/restart$/, post: restartService },
];

async function restartService(c: RequestContext): Promise<Reply> {
  requireToken(c.req, c.opts.token);
  await c.opts.source.restart(c.service);
  return json(200, { restarted: c.service });
}

function parseTail(raw: string | null): number | undefined {
  if (raw === null) return undefined;
  const n = /^\d{1,7}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(n <= MAX_TAIL)) {
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `tail must be a whole number of lines from 0 to ${MAX_TAIL}, got '${raw}'`,
    );
  }
  return n;
}

/** Hashing first gives timingSafeEqual equal lengths, so the comparison leaks neither content nor length. */
function tokensEqual(given: string, expected: string): boolean {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

function requireToken(req: IncomingMessage, token: string | undefined): void {
  if (!token) {
    throw new ApiError(
      403,
      "E_FORBIDDEN",
      "state-changing calls are disabled: api.token must be set in the device config (or FLEETLET_API_TOKEN)",
    );
  }
  const challenge = { "www-authenticate": 'Bearer realm="fleetlet"' };
  const m = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? "");
  if (!m)
    throw new ApiError(
      401,
      "E_UNAUTHORIZED",
      "this call needs an 'Authorization: Bearer <api.token>' header",
      challenge,
    );
  if (!tokensEqual(m[1]!, token))
    throw new ApiError(401, "E_UNAUTHORIZED", "the bearer token does not match api.token", challenge);
}

function decodeService(raw: string | undefined): string {
  if (raw === undefined) return "";
  try {
    return decodeURIComponent(raw);
  } catch {
    // A malformed escape such as "%zz" is the client's mistake: say so instead of failing with 500.
    throw new FleetError("E_INVALID_ARGUMENT", `service name '${raw}' is not valid percent-encoding`);
  }
}

function route(req: IncomingMessage, opts: StatusServerOptions): Reply | Promise<Reply> {
  const [path = "/", search = ""] = (req.url ?? "/").split("?", 2);
  for (const r of ROUTES) {
    const m = r.pattern.exec(path);
    if (!m) continue;
    // HEAD is a GET without a body; node:http drops the body for HEAD by itself.
    const handler = req.method === "GET" || req.method === "HEAD" ? r.get : req.method === "POST" ? r.post : undefined;
    if (!handler) {
      const allow = [...(r.get ? ["GET", "HEAD"] : []), ...(r.post ? ["POST"] : [])].join(", ");
      throw new ApiError(405, "E_METHOD_NOT_ALLOWED", `${req.method} is not allowed on ${path}; use ${allow}`, {
        allow,
      });
    }
    return handler({ req, opts, service: decodeService(m[1]), query: new URLSearchParams(search) });
  }
  throw new FleetError("E_NOT_FOUND", `no such endpoint: ${path}`);
}

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  E_NOT_FOUND: 404,
  E_INVALID_ARGUMENT: 400,
  E_CONFLICT: 409,
  E_CONTAINER_RUNNING: 409,
};

function errorReply(err: unknown): Reply {
  if (err instanceof ApiError)
    return { ...json(err.status, { code: err.code, message: err.message }), headers: err.headers };
  if (err instanceof FleetError) return json(HTTP_STATUS[err.code] ?? 500, err.toJSON());
  const message = err instanceof Error ? err.message : String(err);
  return json(500, { code: "E_INTERNAL", message: `status endpoint: ${message}` });
}

async function respond(req: IncomingMessage, res: ServerResponse, opts: StatusServerOptions): Promise<void> {
  // No route reads a body; discard any so a keep-alive connection stays usable.
  req.resume();
  let reply: Reply;
  try {
    reply = await route(req, opts);
  } catch (err) {
    reply = errorReply(err);
  }
  res.writeHead(reply.status, {
    "content-type": reply.type,
    "content-length": Buffer.byteLength(reply.body),
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    ...reply.headers,
  });
  res.end(reply.body);
}

function makeServer(opts: StatusServerOptions): Server {
  const server = createServer((req, res) => {
    // respond() turns every handler error into a reply; what is left is a broken connection.
    respond(req, res, opts).catch((err: unknown) => res.destroy(err instanceof Error ? err : undefined));
  });
  // Bound how long a slow or stuck client may hold a connection on a small device.
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  return server;
}

function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || port > 65535)
    throw new FleetError("E_INVALID_CONFIG", `api.listen '${listen}': expected HOST:PORT such as 127.0.0.1:7780`);
  return { host: m[1] ?? (m[2] || "127.0.0.1"), port };
}

function listenOn(server: Server, target: ListenOptions, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err) => {
      const code = isErrno(err, "EADDRINUSE") ? "E_CONFLICT" : "E_RUNTIME";
      reject(new FleetError(code, `status endpoint cannot listen on ${what}: ${err.message}`, { cause: err }));
    });
    server.listen(target, () => resolve());
  });
}

/** True when a live process answers on the socket: then it is not ours to remove. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const probe = connect(path);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", (err) => {
      if (isErrno(err, "ECONNREFUSED") || isErrno(err, "ENOENT")) resolve(false);
      else reject(new FleetError("E_RUNTIME", `api.socket ${path}: cannot tell whether it is in use: ${err.message}`));
    });
  });
}

/** Creates the socket's directory and removes a socket file left by an agent that died. */
async function prepareSocketPath(path: string): Promise<void> {
  // 0750: the directory is the first gate; the socket itself gets 0660 once bound.
  mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if (isErrno(err, "ENOENT")) return;
    throw new FleetError("E_RUNTIME", `api.socket ${path}: ${(err as Error).message}`);
  }
  if (!isSocket)
    throw new FleetError("E_CONFLICT", `api.socket ${path} exists and is not a socket; refusing to replace it`);
  if (await socketAnswers(path)) {
    throw new FleetError(
      "E_CONFLICT",
      `api.socket ${path} is in use by another process (is another fleetlet agent running?)`,
    );
  }
  unlinkSync(path);
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
    // Keep-alive clients (a browser tab refreshing the page) would otherwise hold close() open.
    server.closeAllConnections();
  });
}

async function listenTcp(listen: string, opts: StatusServerOptions): Promise<{ server: Server; port: number }> {
  const { host, port } = parseListen(listen);
  const server = makeServer(opts);
  await listenOn(server, { host, port }, `${host}:${port}`);
  return { server, port: (server.address() as AddressInfo).port };
}

async function listenUnix(path: string, opts: StatusServerOptions): Promise<Server> {
  await prepareSocketPath(path);
  const server = makeServer(opts);
  await listenOn(server, { path }, path);
  chmodSync(path, 0o660);
  return server;
}

/** Starts the endpoint on TCP and, when `socket` is given, on the unix socket too. */
export async function startStatusServer(opts: StatusServerOptions): Promise<StatusServer> {
  const listen = opts.listen ?? DEFAULT_LISTEN;
  if (listen === "" && !opts.socket)
    throw new FleetError("E_INVALID_CONFIG", "status endpoint: neither api.listen nor api.socket is set");
  const tcp = listen === "" ? undefined : await listenTcp(listen, opts);
  let unix: Server | undefined;
  try {
    unix = opts.socket ? await listenUnix(opts.socket, opts) : undefined;
  } catch (err) {
    if (tcp) await closeServer(tcp.server);
    throw err;
  }
  return {
    port: tcp?.port,
    socketPath: opts.socket,
    close: async () => {
      await Promise.all([tcp && closeServer(tcp.server), unix && closeServer(unix)]);
    },
  };
}
