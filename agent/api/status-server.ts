/**
 * The local status endpoint (docs/contract.md, "Local status endpoint"):
 * plain node:http, made at the first connection (lazy-http.ts), on loopback
 * TCP and on a unix socket, the same routes on both (status-routes.ts). Over
 * TCP a request must be addressed to an IP literal or localhost
 * (host-header.ts) and logs need `Authorization: Bearer <api.token>`;
 * anything that changes state needs the token everywhere, and with no token
 * configured such calls are refused outright rather than left open. Given
 * `retry`, a listener that cannot bind is retried in the background
 * (endpoint-listener.ts) instead of failing the start.
 */
import { chmodSync } from "node:fs";
import type { AddressInfo, ListenOptions } from "node:net";
import { FleetError, isErrno } from "../errors.js";
import { type BindRetry, EndpointListener } from "./endpoint-listener.js";
import { LazyHttpListener } from "./lazy-http.js";
import { prepareSocketPath } from "./socket-path.js";
import { type RouteOptions, respond, type Transport } from "./status-routes.js";

export type { BindRetry } from "./endpoint-listener.js";
export type { StatusSource } from "./status-routes.js";

export interface StatusServer {
  /** The TCP port, once bound. */
  readonly port: number | undefined;
  socketPath: string | undefined;
  close(): Promise<void>;
}

export interface StatusServerOptions extends RouteOptions {
  /** "HOST:PORT" ("[::1]:7780" for IPv6); port 0 picks a free port; "" turns TCP off. Default 127.0.0.1:7780. */
  listen?: string;
  /** A unix socket path; its directory is created and a stale socket file replaced. */
  socket?: string;
  /** Keep retrying a listener that cannot bind, reporting through these callbacks; without it the start fails. */
  retry?: BindRetry;
}

const DEFAULT_LISTEN = "127.0.0.1:7780";

/** A listener that makes its HTTP server, with the routes, at its first connection (lazy-http.ts). */
function makeListener(opts: StatusServerOptions, transport: Transport): LazyHttpListener {
  return new LazyHttpListener((http) => {
    const server = http.createServer((req, res) => {
      // respond() turns every handler error into a reply; what is left is a broken connection.
      respond(req, res, opts, transport).catch((err: unknown) => res.destroy(err instanceof Error ? err : undefined));
    });
    // Bound how long a slow or stuck client may hold a connection on a small device.
    server.headersTimeout = 10_000;
    server.requestTimeout = 15_000;
    return server;
  });
}

/** "HOST:PORT" or "[V6]:PORT" (an empty host is 127.0.0.1), or E_INVALID_CONFIG naming api.listen. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || port > 65535)
    throw new FleetError("E_INVALID_CONFIG", `api.listen '${listen}': expected HOST:PORT such as 127.0.0.1:7780`);
  return { host: m[1] ?? (m[2] || "127.0.0.1"), port };
}

function listenOn(server: LazyHttpListener, target: ListenOptions, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.listener.once("error", (err) => {
      const code = isErrno(err, "EADDRINUSE") ? "E_CONFLICT" : "E_RUNTIME";
      reject(new FleetError(code, `status endpoint cannot listen on ${what}: ${err.message}`, { cause: err }));
    });
    server.listener.listen(target, () => resolve());
  });
}

async function listenTcp(host: string, port: number, opts: StatusServerOptions): Promise<LazyHttpListener> {
  const server = makeListener(opts, "tcp");
  await listenOn(server, { host, port }, `${host}:${port}`);
  return server;
}

async function listenUnix(path: string, opts: StatusServerOptions): Promise<LazyHttpListener> {
  await prepareSocketPath(path);
  const server = makeListener(opts, "unix");
  await listenOn(server, { path }, path);
  chmodSync(path, 0o660);
  return server;
}

/**
 * Starts the endpoint on TCP and, when `socket` is given, on the unix socket
 * too. Resolves once each listener has made its first attempt.
 */
export async function startStatusServer(opts: StatusServerOptions): Promise<StatusServer> {
  const listen = opts.listen ?? DEFAULT_LISTEN;
  if (listen === "" && !opts.socket)
    throw new FleetError("E_INVALID_CONFIG", "status endpoint: neither api.listen nor api.socket is set");
  const hostPort = listen === "" ? undefined : parseListen(listen);
  const tcp = hostPort && new EndpointListener(listen, () => listenTcp(hostPort.host, hostPort.port, opts), opts.retry);
  const socket = opts.socket;
  const unix = socket ? new EndpointListener(socket, () => listenUnix(socket, opts), opts.retry) : undefined;
  const close = async () => {
    await Promise.all([tcp?.close(), unix?.close()]);
  };
  try {
    await tcp?.attempt();
    await unix?.attempt();
  } catch (err) {
    await close();
    throw err;
  }
  return {
    get port() {
      return (tcp?.bound?.address() as AddressInfo | null | undefined)?.port;
    },
    socketPath: socket,
    close,
  };
}
