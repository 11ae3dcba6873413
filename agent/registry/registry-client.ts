/**
 * One registry, over got: TLS with the configured CA (plain HTTP only when
 * the registry is configured `insecure`), anonymous, basic or bearer-token
 * auth (tokens cached per scope until they expire), redirects followed by
 * hand so that Authorization never goes to another host, and retries with
 * exponential backoff and jitter on network errors, 5xx and 429.
 */
import { readFileSync } from "node:fs";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import got, { type Headers, type OptionsInit, type OptionsOfBufferResponseBody, type RequestError } from "got";
import { FleetError } from "../errors.js";
import { type Challenge, parseChallenge } from "./www-authenticate.js";

export interface RegistryAuthConfig {
  username?: string | undefined;
  password?: string | undefined;
  /** Path of a PEM CA bundle that signs the registry's certificate. */
  ca?: string | undefined;
  insecure?: boolean | undefined;
}

export interface RetryPolicy {
  attempts: number;
  baseMs: number;
  maxMs: number;
}

export interface RegistryResponse {
  status: number;
  headers: Headers;
  body: Buffer;
}

export interface StreamResponse {
  status: number;
  headers: Headers;
  body: Readable;
}

const TLS_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_HAS_EXPIRED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
  "EPROTO",
  "ERR_SSL_WRONG_VERSION_NUMBER",
]);
const RETRYABLE_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ETIMEDOUT",
  "EPIPE",
  "EAI_AGAIN",
  "ENOTFOUND",
  "ENETUNREACH",
  "EHOSTUNREACH",
  "ERR_STREAM_PREMATURE_CLOSE",
  "ECONNABORTED",
]);

export class RegistryClient {
  readonly registry: string;
  readonly origin: string;
  private readonly auth: RegistryAuthConfig;
  private readonly ca: Buffer | undefined;
  private readonly tokens = new Map<string, { value: string; expires: number }>();
  private challenge: Challenge | undefined;
  readonly retry: RetryPolicy;

  constructor(registry: string, auth: RegistryAuthConfig = {}, retry: Partial<RetryPolicy> = {}) {
    this.registry = registry;
    this.auth = auth;
    this.origin = `${auth.insecure ? "http" : "https"}://${registry}`;
    this.retry = { attempts: 5, baseMs: 250, maxMs: 8000, ...retry };
    try {
      this.ca = auth.ca ? readFileSync(auth.ca) : undefined;
    } catch (err) {
      throw new FleetError(
        "E_INVALID_CONFIG",
        `registries."${registry}".ca: cannot read ${auth.ca}: ${(err as Error).message}`,
      );
    }
  }

  private options(headers: Record<string, string>, signal?: AbortSignal): OptionsOfBufferResponseBody {
    return {
      headers: { "user-agent": "fleetlet", ...headers },
      https: this.ca ? { certificateAuthority: this.ca } : {},
      throwHttpErrors: false,
      followRedirect: false,
      retry: { limit: 0 },
      timeout: { connect: 10_000, response: 30_000 },
      responseType: "buffer",
      ...(signal ? { signal } : {}),
    };
  }

  /** The Authorization header for a repository scope, when one is known. */
  private authorization(scope: string): string | undefined {
    if (this.challenge?.scheme === "bearer") {
      const t = this.tokens.get(scope);
      return t && t.expires > Date.now() ? `Bearer ${t.value}` : undefined;
    }
    if (this.challenge?.scheme === "basic" && this.auth.username !== undefined) {
      return `Basic ${Buffer.from(`${this.auth.username}:${this.auth.password ?? ""}`).toString("base64")}`;
    }
    return undefined;
  }

  /** Answers a 401: learns the scheme and, for bearer, fetches a token for the scope. */
  private async authenticate(header: string | undefined, scope: string, signal?: AbortSignal): Promise<void> {
    const challenge = parseChallenge(header);
    if (!challenge) throw this.authError("the registry asked for authentication without saying how");
    this.challenge = challenge;
    if (challenge.scheme === "basic") {
      if (this.auth.username === undefined) throw this.authError("the registry needs a username and password");
      return;
    }
    if (challenge.scheme !== "bearer" || !challenge.params.realm)
      throw this.authError(`unsupported authentication scheme "${challenge.scheme}"`);
    const url = new URL(challenge.params.realm);
    if (challenge.params.service) url.searchParams.set("service", challenge.params.service);
    url.searchParams.append("scope", scope);
    const headers: Record<string, string> = {};
    if (this.auth.username !== undefined)
      headers.authorization = `Basic ${Buffer.from(`${this.auth.username}:${this.auth.password ?? ""}`).toString("base64")}`;
    const res = await this.withRetry(`token from ${url.origin}`, () => got(url, this.options(headers, signal)));
    if (res.statusCode === 401 || res.statusCode === 403)
      throw this.authError(`the token service at ${url.origin} refused the credentials (HTTP ${res.statusCode})`);
    if (res.statusCode !== 200)
      throw new FleetError("E_REGISTRY", `${this.registry}: token service answered HTTP ${res.statusCode}`);
    const body = JSON.parse(res.body.toString("utf8")) as {
      token?: string;
      access_token?: string;
      expires_in?: number;
      issued_at?: string;
    };
    const value = body.token ?? body.access_token;
    if (!value) throw new FleetError("E_REGISTRY", `${this.registry}: the token service sent no token`);
    const lifetime = Math.max(60, body.expires_in ?? 60) * 1000;
    // Refresh a little early, so a token never expires mid-request.
    this.tokens.set(scope, { value, expires: Date.now() + lifetime - 10_000 });
  }

  private authError(why: string): FleetError {
    const hint = this.auth.username === undefined ? `; set registries."${this.registry}".username and password` : "";
    return new FleetError("E_REGISTRY_AUTH", `${this.registry}: authentication failed: ${why}${hint}`);
  }

  /** A request with auth, redirects and retries; the body is buffered (manifests, configs, small replies). */
  async request(
    method: "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE",
    path: string,
    opts: {
      scope: string;
      headers?: Record<string, string>;
      body?: Buffer | (() => Readable);
      signal?: AbortSignal;
      maxBytes?: number;
    },
  ): Promise<RegistryResponse> {
    for (let authTries = 0; ; authTries++) {
      const headers: Record<string, string> = { ...opts.headers };
      const authz = this.authorization(opts.scope);
      if (authz) headers.authorization = authz;
      let url = new URL(path, this.origin);
      // A body given as a factory is opened anew for each attempt.
      const body = () =>
        opts.body === undefined ? {} : { body: typeof opts.body === "function" ? opts.body() : opts.body };
      let res = await this.withRetry(`${method} ${url.pathname}`, () =>
        got(url, { ...this.options(headers, opts.signal), method, ...body() }),
      );
      for (
        let hops = 0;
        res.statusCode >= 300 && res.statusCode < 400 && res.headers.location && method !== "PUT" && hops < 5;
        hops++
      ) {
        const next = new URL(String(res.headers.location), url);
        if (next.origin !== this.origin) delete headers.authorization; // never send credentials to another host
        url = next;
        res = await this.withRetry(`${method} ${url.pathname}`, () =>
          got(url, { ...this.options(headers, opts.signal), method }),
        );
      }
      if (res.statusCode === 401 && authTries === 0) {
        await this.authenticate(headerText(res.headers["www-authenticate"]), opts.scope, opts.signal);
        continue;
      }
      if (res.statusCode === 401 || res.statusCode === 403)
        throw this.authError(`${method} ${url.pathname} was refused (HTTP ${res.statusCode})`);
      if (opts.maxBytes !== undefined && res.body.length > opts.maxBytes) {
        throw new FleetError(
          "E_REGISTRY",
          `${this.registry}${url.pathname}: ${res.body.length} bytes is more than the ${opts.maxBytes} allowed`,
        );
      }
      return { status: res.statusCode, headers: res.headers, body: res.body };
    }
  }

  /** Opens a GET as a stream (blob downloads), with the same auth and redirect handling. */
  async openStream(
    path: string,
    opts: { scope: string; headers?: Record<string, string>; signal?: AbortSignal },
  ): Promise<StreamResponse> {
    for (let authTries = 0; ; authTries++) {
      const headers: Record<string, string> = { ...opts.headers };
      const authz = this.authorization(opts.scope);
      if (authz) headers.authorization = authz;
      let url = new URL(path, this.origin);
      let res = await this.streamOnce(url, headers, opts.signal);
      for (let hops = 0; res.status >= 300 && res.status < 400 && res.headers.location && hops < 5; hops++) {
        res.body.destroy();
        const next = new URL(String(res.headers.location), url);
        if (next.origin !== this.origin) delete headers.authorization;
        url = next;
        res = await this.streamOnce(url, headers, opts.signal);
      }
      if (res.status === 401 && authTries === 0) {
        res.body.destroy();
        await this.authenticate(headerText(res.headers["www-authenticate"]), opts.scope, opts.signal);
        continue;
      }
      if (res.status === 401 || res.status === 403) {
        res.body.destroy();
        throw this.authError(`GET ${url.pathname} was refused (HTTP ${res.status})`);
      }
      return res;
    }
  }

  private streamOnce(url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<StreamResponse> {
    return new Promise((resolve, reject) => {
      const { responseType: _buffered, ...options } = this.options(headers, signal);
      const stream = got.stream(url, { ...options, isStream: true } as OptionsInit & { isStream: true });
      stream.once("response", (res: { statusCode: number; headers: Headers }) =>
        resolve({ status: res.statusCode, headers: res.headers, body: stream }),
      );
      stream.once("error", (err: Error) => reject(this.networkError(`GET ${url.pathname}`, err)));
    });
  }

  /** Runs `attempt` until it gives a non-retryable answer, backing off with jitter. */
  async withRetry<T extends { statusCode: number; headers: Headers }>(
    what: string,
    attempt: () => Promise<T>,
  ): Promise<T> {
    for (let n = 1; ; n++) {
      let res: T | undefined;
      let error: FleetError | undefined;
      try {
        res = await attempt();
        if (res.statusCode < 500 && res.statusCode !== 429) return res;
      } catch (err) {
        error = this.networkError(what, err);
        if (error.code !== "E_REGISTRY_UNREACHABLE") throw error;
      }
      if (n >= this.retry.attempts) {
        if (error) throw error;
        throw new FleetError(
          "E_REGISTRY",
          `${this.registry}: ${what} kept failing with HTTP ${res!.statusCode} after ${n} attempts`,
        );
      }
      await sleep(this.backoff(n, res?.headers["retry-after"]));
    }
  }

  backoff(attempt: number, retryAfter?: string | string[]): number {
    const header = Array.isArray(retryAfter) ? retryAfter[0] : retryAfter;
    if (header) {
      const seconds = Number(header);
      const when = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - Date.now();
      if (Number.isFinite(when) && when >= 0) return Math.min(when, 60_000);
    }
    const ceiling = Math.min(this.retry.maxMs, this.retry.baseMs * 2 ** (attempt - 1));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  networkError(what: string, err: unknown): FleetError {
    if (err instanceof FleetError) return err;
    const e = err as RequestError & { code?: string };
    const code = e.code ?? (e.cause as NodeJS.ErrnoException | undefined)?.code ?? "";
    if (e.name === "AbortError" || code === "ERR_ABORTED")
      return new FleetError("E_ABORTED", `${this.registry}: ${what} was cancelled`, { cause: err });
    if (TLS_CODES.has(code) || /certificate|self.signed|TLS|SSL/i.test(e.message ?? "")) {
      return new FleetError(
        "E_REGISTRY_TLS",
        `${this.registry}: TLS: the registry's certificate is not trusted (${code || e.message}); set registries."${this.registry}".ca to the CA that signed it`,
        { cause: err },
      );
    }
    // Link-level failures are worth retrying; anything else is an answer.
    const transient = RETRYABLE_CODES.has(code) || code.startsWith("ERR_STREAM") || code === "";
    return new FleetError(
      transient ? "E_REGISTRY_UNREACHABLE" : "E_REGISTRY",
      `${this.registry}: ${what} failed: ${code || e.message}`,
      { cause: err },
    );
  }
}

function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The scope string for a repository. */
export function repoScope(repository: string, actions: string): string {
  return `repository:${repository}:${actions}`;
}
