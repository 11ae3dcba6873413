/**
 * The local status endpoint (docs/contract.md, "Local status endpoint"): plain
 * node:http on loopback TCP and on a unix socket, the same routes on both
 * (status-routes.ts). Reads are open to anyone who can reach it; anything
 * that changes state needs `Authorization: Bearer <api.token>`, and with no
 * token configured such calls are refused outright rather than left open.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo, ListenOptions } from "node:net";
import { connect } from "node:net";
import { dirname } from "node:path";
import { FleetError, isErrno } from "../errors.js";
import { type RouteOptions, respond } from "./status-routes.js";

export type { StatusSource } from "./status-routes.js";

export interface StatusServer {
  port: number | undefined;
  socketPath: string | undefined;
  close(): Promise<void>;
}

export interface StatusServerOptions extends RouteOptions {
  /** "HOST:PORT" ("[::1]:7780" for IPv6); port 0 picks a free port; "" turns TCP off. Default 127.0.0.1:7780. */
  listen?: string;
  /** A unix socket path; its directory is created and a stale socket file replaced. */
  socket?: string;
}

const DEFAULT_LISTEN = "127.0.0.1:7780";

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
