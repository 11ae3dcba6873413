/**
 * The status endpoint's routes: `/` (the page), /healthz, /v1/status,
 * /metrics, a service's logs and its restart; the checks every request
 * passes (over TCP, a Host that is an IP literal or localhost; the method:
 * HEAD as GET, 405 with Allow), and the response every request gets, errors
 * included. The state and metrics are open to whoever reaches the endpoint;
 * logs need the bearer token over TCP (a service's output may hold anything)
 * and nothing on the unix socket, whose mode is the gate; a restart always
 * needs the token.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AgentMetrics, ReportedState } from "../../schemas/reported.js";
import { FleetError } from "../errors.js";
import { ApiError, errorReply, json, type Reply, text } from "./api-reply.js";
import { requireToken } from "./bearer-token.js";
import { requireAllowedHost } from "./host-header.js";
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

/** What the routes answer from. */
export interface RouteOptions {
  /** The bearer token for state-changing calls; without one they all get 403. */
  token?: string;
  source: StatusSource;
}

/** Which listener a request came in on: TCP checks Host and wants the token for logs. */
export type Transport = "tcp" | "unix";

const MAX_TAIL = 1_000_000;

interface RequestContext {
  req: IncomingMessage;
  service: string;
  query: URLSearchParams;
  opts: RouteOptions;
  transport: Transport;
}

type Handler = (ctx: RequestContext) => Reply | Promise<Reply>;

interface Route {
  /** Matched against the raw path; group 1, when present, is the service name (still percent-encoded). */
  pattern: RegExp;
  get?: Handler;
  post?: Handler;
}

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
    get: (c) => {
      if (c.transport === "tcp")
        requireToken(
          c.req,
          c.opts.token,
          "reading logs over TCP is disabled (the unix socket api.socket needs no token)",
        );
      return text(c.opts.source.logs(c.service, parseTail(c.query.get("tail"))));
    },
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

function decodeService(raw: string | undefined): string {
  if (raw === undefined) return "";
  try {
    return decodeURIComponent(raw);
  } catch {
    // A malformed escape such as "%zz" is the client's mistake: say so instead of failing with 500.
    throw new FleetError("E_INVALID_ARGUMENT", `service name '${raw}' is not valid percent-encoding`);
  }
}

function route(req: IncomingMessage, opts: RouteOptions, transport: Transport): Reply | Promise<Reply> {
  if (transport === "tcp") requireAllowedHost(req);
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
    return handler({ req, opts, transport, service: decodeService(m[1]), query: new URLSearchParams(search) });
  }
  throw new FleetError("E_NOT_FOUND", `no such endpoint: ${path}`);
}

/** Answers one request that came in on `transport`; every handler error becomes a reply. */
export async function respond(
  req: IncomingMessage,
  res: ServerResponse,
  opts: RouteOptions,
  transport: Transport,
): Promise<void> {
  // No route reads a body; discard any so a keep-alive connection stays usable.
  req.resume();
  let reply: Reply;
  try {
    reply = await route(req, opts, transport);
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
