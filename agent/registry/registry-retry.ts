/**
 * How requests to one registry are retried: network errors that may pass,
 * 5xx and 429 are tried again after an exponential backoff with jitter (or
 * the Retry-After the registry asked for); anything else is an answer. And
 * what a failed request's error is: cancelled, an untrusted certificate, an
 * unreachable registry (worth retrying) or another registry error.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { FleetError } from "../errors.js";
import type { Headers } from "./registry-http.js";

export interface RetryPolicy {
  attempts: number;
  baseMs: number;
  maxMs: number;
}

const DEFAULT_RETRY: RetryPolicy = { attempts: 5, baseMs: 250, maxMs: 8000 };

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

export class RegistryRetry {
  readonly policy: RetryPolicy;

  constructor(
    private readonly registry: string,
    policy: Partial<RetryPolicy> = {},
  ) {
    this.policy = { ...DEFAULT_RETRY, ...policy };
  }

  /** Runs `attempt` until it gives a non-retryable answer, backing off with jitter; `signal` ends a backoff at once. */
  async run<T extends { statusCode: number; headers: Headers }>(
    what: string,
    attempt: () => Promise<T>,
    signal?: AbortSignal,
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
      if (n >= this.policy.attempts) {
        if (error) throw error;
        throw new FleetError(
          "E_REGISTRY",
          `${this.registry}: ${what} kept failing with HTTP ${res!.statusCode} after ${n} attempts`,
        );
      }
      await this.wait(what, this.backoff(n, res?.headers["retry-after"]), signal);
    }
  }

  /** Sleeps `ms`, or until `signal` aborts: then E_ABORTED. */
  async wait(what: string, ms: number, signal?: AbortSignal): Promise<void> {
    try {
      await sleep(ms, undefined, signal ? { signal } : {});
    } catch (err) {
      throw this.networkError(what, err);
    }
  }

  backoff(attempt: number, retryAfter?: string | string[]): number {
    const header = Array.isArray(retryAfter) ? retryAfter[0] : retryAfter;
    if (header) {
      const seconds = Number(header);
      const when = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - Date.now();
      if (Number.isFinite(when) && when >= 0) return Math.min(when, 60_000);
    }
    const ceiling = Math.min(this.policy.maxMs, this.policy.baseMs * 2 ** (attempt - 1));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  networkError(what: string, err: unknown): FleetError {
    if (err instanceof FleetError) return err;
    const e = err as Error & { code?: string };
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
      `${this.registry}: ${what} failed: ${reason(code, e.message)}`,
      { cause: err },
    );
  }
}

/** The error's code, and its message where that says more ("read ECONNRESET" does not; "the server closed the connection in the middle of the answer" does). */
function reason(code: string, message: string | undefined): string {
  if (!code) return message ?? "";
  return message && !message.includes(code) ? `${code}: ${message}` : code;
}
