/**
 * One registry: TLS with the configured CA (plain HTTP only when the
 * registry is configured `insecure`) over kept-alive connections
 * (registry-http.ts; blob bodies over the native core's, blob-http.ts),
 * anonymous, basic or bearer-token auth (registry-auth.ts), redirects
 * followed by hand so that Authorization never goes to another host, and
 * retries with exponential backoff and jitter on network errors, 5xx and
 * 429 (registry-retry.ts). A client
 * lives as long as its owner keeps it: its connections and tokens serve
 * every pull from the registry (registry-clients.ts).
 */
import { readFileSync } from "node:fs";
import type { Readable } from "node:stream";
import { FleetError } from "../errors.js";
import { loadNative } from "../system/native.js";
import { type BlobAnswer, BlobHttp } from "./blob-http.js";
import { RegistryAuth, type RegistryCredentials } from "./registry-auth.js";
import { type Headers, RegistryHttp } from "./registry-http.js";
import { RegistryRetry, type RetryPolicy } from "./registry-retry.js";

export interface RegistryAuthConfig extends RegistryCredentials {
  /** Path of a PEM CA bundle that signs the registry's certificate. */
  ca?: string | undefined;
  insecure?: boolean | undefined;
}

export interface RegistryResponse {
  status: number;
  headers: Headers;
  body: Buffer;
}

export class RegistryClient {
  readonly registry: string;
  readonly origin: string;
  private readonly http: RegistryHttp;
  private readonly ca: Buffer | undefined;
  private blobs: BlobHttp | undefined;
  private readonly auth: RegistryAuth;
  private readonly retrier: RegistryRetry;
  readonly retry: RetryPolicy;

  constructor(registry: string, auth: RegistryAuthConfig = {}, retry: Partial<RetryPolicy> = {}) {
    this.registry = registry;
    this.origin = `${auth.insecure ? "http" : "https"}://${registry}`;
    this.retrier = new RegistryRetry(registry, retry);
    this.retry = this.retrier.policy;
    this.auth = new RegistryAuth(
      registry,
      auth,
      (url, headers, signal) =>
        this.withRetry(
          `token from ${url.origin}`,
          () => this.http.buffered(url, { method: "GET", headers, signal }),
          signal,
        ),
      auth.insecure === true,
    );
    let ca: Buffer | undefined;
    try {
      ca = auth.ca ? readFileSync(auth.ca) : undefined;
    } catch (err) {
      throw new FleetError(
        "E_INVALID_CONFIG",
        `registries."${registry}".ca: cannot read ${auth.ca}: ${(err as Error).message}`,
      );
    }
    this.ca = ca;
    this.http = new RegistryHttp(ca);
  }

  /** Closes the client's kept-alive connections (a client not closed lets the process exit all the same). */
  close(): void {
    this.http.close();
    this.blobs?.close();
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
      const authz = this.auth.authorization(opts.scope);
      if (authz) headers.authorization = authz;
      let url = new URL(path, this.origin);
      // A body given as a factory is opened anew for each attempt.
      const body = () =>
        opts.body === undefined ? {} : { body: typeof opts.body === "function" ? opts.body() : opts.body };
      let res = await this.withRetry(
        `${method} ${url.pathname}`,
        () => this.http.buffered(url, { method, headers, signal: opts.signal, ...body() }, opts.maxBytes),
        opts.signal,
      );
      for (
        let hops = 0;
        res.statusCode >= 300 && res.statusCode < 400 && res.headers.location && method !== "PUT" && hops < 5;
        hops++
      ) {
        url = this.redirect(url, res.headers.location, headers);
        res = await this.withRetry(
          `${method} ${url.pathname}`,
          () => this.http.buffered(url, { method, headers, signal: opts.signal }, opts.maxBytes),
          opts.signal,
        );
      }
      // Only the registry's own challenge is answered: a host it redirected to gets no credentials.
      if (res.statusCode === 401 && authTries === 0 && url.origin === this.origin) {
        await this.auth.authenticate(headerText(res.headers["www-authenticate"]), opts.scope, opts.signal);
        continue;
      }
      if (res.statusCode === 401 || res.statusCode === 403)
        throw this.auth.error(`${method} ${url.pathname} was refused (HTTP ${res.statusCode})`);
      return { status: res.statusCode, headers: res.headers, body: res.body };
    }
  }

  /**
   * Opens a blob's GET (blob-http.ts: its body goes from the socket to the
   * ingest natively), with the same auth and redirect handling.
   */
  async openBlob(
    path: string,
    opts: { scope: string; headers?: Record<string, string>; signal?: AbortSignal },
  ): Promise<BlobAnswer> {
    for (let authTries = 0; ; authTries++) {
      const headers: Record<string, string> = { ...opts.headers };
      const authz = this.auth.authorization(opts.scope);
      if (authz) headers.authorization = authz;
      let url = new URL(path, this.origin);
      let res = await this.blobOnce(url, headers, opts.signal);
      for (let hops = 0; res.status >= 300 && res.status < 400 && res.headers.location && hops < 5; hops++) {
        res.body.destroy();
        url = this.redirect(url, res.headers.location, headers);
        res = await this.blobOnce(url, headers, opts.signal);
      }
      if (res.status === 401 && authTries === 0 && url.origin === this.origin) {
        res.body.destroy();
        await this.auth.authenticate(headerText(res.headers["www-authenticate"]), opts.scope, opts.signal);
        continue;
      }
      if (res.status === 401 || res.status === 403) {
        res.body.destroy();
        throw this.auth.error(`GET ${url.pathname} was refused (HTTP ${res.status})`);
      }
      return res;
    }
  }

  /**
   * Where a redirect from `from` leads. Authorization never goes to another
   * origin (host, port or scheme): it is dropped from `headers`. A redirect
   * from https down to plain http (or to anything but http and https) is
   * refused: what travels there could be read or changed on the way.
   */
  private redirect(from: URL, location: string, headers: Record<string, string>): URL {
    let next: URL;
    try {
      next = new URL(location, from);
    } catch {
      // Not swallowed: the URL's own error says less than this one.
      throw new FleetError("E_REGISTRY", `${this.registry}: ${from.pathname} redirects to "${location}", not a URL`);
    }
    const allowed = next.protocol === "https:" || (next.protocol === "http:" && from.protocol === "http:");
    if (!allowed)
      throw new FleetError(
        "E_REGISTRY",
        `${this.registry}: ${from.pathname} redirects from ${from.protocol} to ${next.protocol}//${next.host}; refused`,
      );
    if (next.origin !== this.origin) delete headers.authorization; // never send credentials to another origin
    return next;
  }

  private async blobOnce(url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<BlobAnswer> {
    this.blobs ??= new BlobHttp(loadNative().core, this.ca, `registries."${this.registry}".ca`);
    try {
      return await this.blobs.open(url, headers, signal);
    } catch (err) {
      throw this.networkError(`GET ${url.pathname}`, err);
    }
  }

  /** Runs `attempt` until it gives a non-retryable answer, backing off with jitter; `signal` ends a backoff at once. */
  withRetry<T extends { statusCode: number; headers: Headers }>(
    what: string,
    attempt: () => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    return this.retrier.run(what, attempt, signal);
  }

  /** Waits `ms` before a retry, or until `signal` aborts: then E_ABORTED. */
  wait(what: string, ms: number, signal?: AbortSignal): Promise<void> {
    return this.retrier.wait(what, ms, signal);
  }

  /** The wait before retry `attempt` (1-based), or what the registry's Retry-After asked for. */
  backoff(attempt: number, retryAfter?: string | string[]): number {
    return this.retrier.backoff(attempt, retryAfter);
  }

  /** The FleetError for a request that failed without an answer. */
  networkError(what: string, err: unknown): FleetError {
    return this.retrier.networkError(what, err);
  }
}

function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The scope string for a repository. */
export function repoScope(repository: string, actions: string): string {
  return `repository:${repository}:${actions}`;
}
