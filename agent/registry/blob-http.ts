/**
 * Blob bodies over the native core's HTTP connections: the socket, TLS,
 * the body's framing, the file write and the SHA-256 all run on a worker
 * thread (native/src/http-conn.h), so no byte of a layer passes through
 * JavaScript or its garbage collector. Here: the name lookup, the request
 * head, the answer's head parsed for the caller, and a few kept-alive
 * connections per origin, reused most recent first. Redirects, auth and
 * retries stay with registry-client.ts, as for every other request.
 */
import { lookup } from "node:dns"; // not dns/promises: node:net loads node:dns already
import { errnoName, FleetError } from "../errors.js";
import type {
  NativeBlobWriter,
  NativeCore,
  NativeHttpConnection,
  NativeReceive,
  NativeTlsContext,
} from "../system/native.js";
import type { Headers, HttpTimeouts } from "./registry-http.js";

const IDLE_CONNECTION_MS = 30_000;
const KEPT_PER_ORIGIN = 4;
/** Headers that name one thing: a second copy is ignored rather than joined. */
const SINGLE = new Set(["location", "content-range", "content-length", "content-type", "retry-after"]);

export type NativeHttp = Pick<NativeCore, "TlsContext" | "HttpConnection">;

/** The answer's status and headers; the body is read into an ingest (Ingest.receive) or given up. */
export interface BlobAnswer {
  status: number;
  headers: Headers;
  body: BlobBody;
}

function abortError(): Error {
  return Object.assign(new Error("the download was cancelled"), { name: "AbortError" });
}

/** Runs `op` on `conn`, closing the connection at once when `signal` aborts (the operation then fails). */
async function abortable<T>(conn: NativeHttpConnection, signal: AbortSignal | undefined, op: () => Promise<T>) {
  if (signal?.aborted) throw abortError();
  const onAbort = () => conn.close();
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    return await op();
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}

/** The body of one answer, still on its connection. */
export class BlobBody {
  private done = false;

  constructor(
    private readonly conn: NativeHttpConnection,
    private readonly release: (conn: NativeHttpConnection) => void,
    private readonly signal: AbortSignal | undefined,
  ) {}

  /** Up to `want` bytes into the writer's file at `position` (and `copy`); a cancel shows as an AbortError. */
  async receive(writer: NativeBlobWriter, position: number, want: number, copy?: Buffer): Promise<NativeReceive> {
    const r = await abortable(this.conn, this.signal, () => this.conn.receive(writer, position, want, copy));
    if (r.error && this.signal?.aborted) return { ...r, error: abortError() };
    return r.error ? { ...r, error: connectionError(r.error) as NonNullable<NativeReceive["error"]> } : r;
  }

  /** Gives the connection back when its answer was read whole, else closes it. */
  destroy(): void {
    if (this.done) return;
    this.done = true;
    this.release(this.conn);
  }
}

/** Refuses a header value that would end the line: a token service's answer must not write our request. */
function headerLine(name: string, value: string): string {
  if (/[\r\n]/.test(value) || /[^!#$%&'*+.^_`|~0-9A-Za-z-]/.test(name))
    throw new FleetError("E_REGISTRY", `the request header ${name} would hold a line break; refused`);
  return `${name}: ${value}\r\n`;
}

function requestHead(url: URL, headers: Record<string, string>): string {
  let head = `GET ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\nuser-agent: fleetlet\r\n`;
  for (const [name, value] of Object.entries(headers)) head += headerLine(name, value);
  return `${head}\r\n`;
}

/** The status and headers of an answer's head, names in lower case as node:http gives them. */
export function parseHead(head: string): { status: number; headers: Headers } {
  const lines = head.split("\r\n");
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? "")?.[1] ?? Number.NaN);
  if (!Number.isInteger(status)) throw new FleetError("E_REGISTRY", `the answer "${lines[0]}" is not HTTP`);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const had = headers[name];
    if (had === undefined) headers[name] = value;
    else if (!SINGLE.has(name)) headers[name] = `${had}, ${value}`;
  }
  return { status, headers };
}

/** The error a native failure stands for, with the errno-style code registry-retry.ts classifies. */
export function connectionError(err: unknown): unknown {
  const e = err as Error & { code?: string };
  if (e.code === "HTTP_PROTOCOL")
    return new FleetError("E_REGISTRY", `the registry's answer is not valid HTTP: ${e.message}`);
  if (e instanceof Error && e.code === undefined) e.code = errnoName(e); // ETIMEDOUT, ECONNRESET, …: retried
  return err;
}

function lateError(ms: number): Error {
  return Object.assign(new Error(`the registry's answer did not come within ${ms} ms`), { code: "ETIMEDOUT" });
}

export class BlobHttp {
  private readonly idle = new Map<string, NativeHttpConnection[]>();
  private readonly timers = new Map<NativeHttpConnection, NodeJS.Timeout>();
  private tls: NativeTlsContext | undefined;

  /** `ca`: the PEM bundle that replaces Node's CAs for this registry; `caField` names it in errors. */
  constructor(
    private readonly native: NativeHttp,
    private readonly ca: Buffer | undefined,
    private readonly caField: string,
    private readonly timeouts: HttpTimeouts = { connectMs: 10_000, responseMs: 30_000, idleMs: 30_000 },
  ) {}

  /** Sends a GET for `url`; resolves when the answer's head is in. */
  async open(url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<BlobAnswer> {
    const head = requestHead(url, headers);
    const conn = this.take(url.origin) ?? (await this.connect(url));
    // The idle timeout bounds each read; this bounds the whole of connect, handshake and head, which a
    // server trickling a byte at a time would otherwise stretch without end.
    const limit = this.timeouts.connectMs + this.timeouts.responseMs;
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      conn.close();
    }, limit);
    try {
      const answer = parseHead(await abortable(conn, signal, () => conn.exchange(head)));
      return { ...answer, body: new BlobBody(conn, (c) => this.giveBack(url.origin, c), signal) };
    } catch (err) {
      conn.close();
      if (signal?.aborted) throw abortError();
      throw late ? lateError(limit) : connectionError(err);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Closes every kept connection. */
  close(): void {
    for (const conns of this.idle.values()) for (const c of conns) c.close();
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.idle.clear();
    this.timers.clear();
  }

  private take(origin: string): NativeHttpConnection | undefined {
    const conn = this.idle.get(origin)?.pop();
    if (conn) {
      clearTimeout(this.timers.get(conn));
      this.timers.delete(conn);
    }
    return conn;
  }

  private giveBack(origin: string, conn: NativeHttpConnection): void {
    const kept = this.idle.get(origin) ?? [];
    if (!conn.reusable() || kept.length >= KEPT_PER_ORIGIN) {
      conn.close();
      return;
    }
    kept.push(conn);
    this.idle.set(origin, kept);
    // Closed before a NAT on the way forgets it silently; the next request reconnects, resuming the TLS session.
    const timer = setTimeout(() => {
      kept.splice(kept.indexOf(conn), 1);
      this.timers.delete(conn);
      conn.close();
    }, IDLE_CONNECTION_MS);
    timer.unref();
    this.timers.set(conn, timer);
  }

  private async connect(url: URL): Promise<NativeHttpConnection> {
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    const secure = url.protocol === "https:";
    const port = Number(url.port || (secure ? 443 : 80));
    const addresses = await new Promise<string>((resolve, reject) =>
      lookup(host, { all: true }, (err, found) =>
        err
          ? reject(Object.assign(new Error(`cannot resolve ${host}: ${err.message}`), { code: err.code }))
          : resolve(found.map((a) => a.address).join(" ")),
      ),
    );
    const { connectMs, idleMs } = this.timeouts;
    return new this.native.HttpConnection(
      addresses,
      port,
      secure ? host : "",
      secure ? this.trust() : null,
      connectMs,
      idleMs,
    );
  }

  private trust(): NativeTlsContext {
    if (this.tls) return this.tls;
    // Node's own CAs (its bundle, plus NODE_EXTRA_CA_CERTS) when the registry names none.
    const pem = this.ca
      ? this.ca.toString()
      : process.getBuiltinModule("node:tls").getCACertificates("default").join("\n");
    try {
      this.tls = new this.native.TlsContext(pem);
    } catch (err) {
      throw new FleetError("E_INVALID_CONFIG", `${this.caField}: ${(err as Error).message}`);
    }
    return this.tls;
  }
}
