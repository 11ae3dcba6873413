/**
 * The HTTP under a registry client, on node:https (node:http for a registry
 * configured `insecure`): one keep-alive agent per client, so that every
 * request to the registry reuses its connections and their TLS sessions; a
 * timeout for connecting, one for the answer's headers and one for a body
 * that stops arriving; the caller's signal aborts. No redirects, retries or
 * decompression here: registry-client.ts decides those.
 */
import {
  type ClientRequest,
  Agent as HttpAgent,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
} from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import type { Readable } from "node:stream";
import { FleetError } from "../errors.js";

export type { IncomingHttpHeaders as Headers } from "node:http";

export interface HttpInit {
  method: string;
  headers: Record<string, string>;
  /** Sent as it is (a Buffer) or piped (a stream; give its content-length in `headers`). */
  body?: Buffer | Readable;
  signal?: AbortSignal | undefined;
}

/** An answer whose body is still to be read (or destroyed, which gives up its connection). */
export interface HttpAnswer {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: IncomingMessage;
}

export interface HttpTimeouts {
  connectMs: number;
  /** From the request's last byte until the answer's headers (an upload's own time does not count). */
  responseMs: number;
  /** Between two pieces of the request or of the answer (a connection, an upload or a body that stops). */
  idleMs: number;
}

const DEFAULT_TIMEOUTS: HttpTimeouts = { connectMs: 10_000, responseMs: 30_000, idleMs: 30_000 };
const IDLE_CONNECTION_MS = 30_000;
/**
 * The most a reply read into memory may hold when its caller names no cap
 * of its own (tokens, error bodies, answers to uploads): a registry or
 * token service that streams without end is cut off here.
 */
export const MAX_REPLY_BYTES = 1 << 20;

/** An error with the errno-style code registry-retry.ts classifies (ETIMEDOUT is retried). */
function timeout(what: string, ms: number): Error {
  return Object.assign(new Error(`${what} took longer than ${ms} ms`), { code: "ETIMEDOUT" });
}

export class RegistryHttp {
  private readonly https: HttpsAgent;
  private readonly http: HttpAgent;
  private readonly timeouts: HttpTimeouts;

  /** `ca`: the PEM bundle that replaces the system's CAs for this registry. */
  constructor(ca: Buffer | undefined, timeouts: Partial<HttpTimeouts> = {}) {
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...timeouts };
    // LIFO: the most recently used connection is the one least likely to have been closed by the server.
    // An idle connection is closed after IDLE_CONNECTION_MS, before a NAT on the way forgets it silently;
    // the next request reconnects, resuming the TLS session the agent keeps.
    const keep = { keepAlive: true, scheduling: "lifo" as const, timeout: IDLE_CONNECTION_MS };
    this.https = new HttpsAgent({ ...keep, ...(ca ? { ca } : {}) });
    this.http = new HttpAgent(keep);
  }

  /** Sends the request; resolves when the answer's headers are in. */
  open(url: URL, init: HttpInit): Promise<HttpAnswer> {
    const { connectMs, responseMs, idleMs } = this.timeouts;
    return new Promise((resolve, reject) => {
      const secure = url.protocol === "https:";
      const req: ClientRequest = (secure ? httpsRequest : httpRequest)(url, {
        method: init.method,
        headers: { "user-agent": "fleetlet", ...init.headers },
        agent: secure ? this.https : this.http,
        ...(init.signal ? { signal: init.signal } : {}),
      });
      let answered = false;
      let answer: NodeJS.Timeout | undefined;
      const fail = (err: Error) => {
        clearTimeout(answer);
        req.destroy(err);
        reject(err);
      };
      // The socket's idle timer, from the start: a connection, an upload or a body that stops moving is cut
      // (and retried by the caller); an upload that moves, however slowly, is not.
      req.setTimeout(idleMs, () =>
        answered
          ? req.destroy(timeout(`reading ${url.pathname}`, idleMs))
          : fail(timeout(`sending ${init.method} ${url.pathname}`, idleMs)),
      );
      // From the request's last byte until the answer's headers: the time an upload takes does not count.
      req.once("finish", () => {
        if (!answered)
          answer = setTimeout(() => fail(timeout(`${init.method} ${url.pathname}`, responseMs)), responseMs);
      });
      req.once("socket", (socket) => {
        if (!socket.connecting) return; // a kept-alive connection
        const connect = setTimeout(() => fail(timeout(`connecting to ${url.host}`, connectMs)), connectMs);
        socket.once("connect", () => clearTimeout(connect));
        socket.once("close", () => clearTimeout(connect));
      });
      req.on("error", (err) => {
        clearTimeout(answer);
        reject(err);
      });
      req.once("response", (res) => {
        answered = true;
        clearTimeout(answer);
        resolve({ statusCode: res.statusCode ?? 0, headers: res.headers, body: res });
      });
      if (init.body === undefined || Buffer.isBuffer(init.body)) req.end(init.body);
      else init.body.once("error", (err) => req.destroy(err)).pipe(req);
    });
  }

  /** The whole answer in memory, refusing a body past `maxBytes` as soon as it is. */
  async buffered(
    url: URL,
    init: HttpInit,
    maxBytes = MAX_REPLY_BYTES,
  ): Promise<{ statusCode: number; headers: IncomingHttpHeaders; body: Buffer }> {
    const res = await this.open(url, init);
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      length += chunk.length;
      if (length > maxBytes) {
        res.body.destroy();
        throw new FleetError("E_REGISTRY", `${url.host}${url.pathname}: more than the ${maxBytes} bytes allowed`);
      }
      chunks.push(chunk);
    }
    return { statusCode: res.statusCode, headers: res.headers, body: Buffer.concat(chunks, length) };
  }

  /** Closes the kept-alive connections. */
  close(): void {
    this.https.destroy();
    this.http.destroy();
  }
}
