/**
 * The check on state-changing calls, and on reading logs over TCP:
 * `Authorization: Bearer <api.token>`, compared in constant time. With no
 * token configured such calls are refused outright (403) rather than left
 * open.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { ApiError } from "./api-reply.js";

/** Hashing first gives timingSafeEqual equal lengths, so the comparison leaks neither content nor length. */
function tokensEqual(given: string, expected: string): boolean {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/**
 * Throws ApiError 403 when no token is configured, 401 (with a challenge) when
 * the request does not carry it. `refusal` says what is disabled without one.
 */
export function requireToken(
  req: IncomingMessage,
  token: string | undefined,
  refusal = "state-changing calls are disabled",
): void {
  if (!token) {
    throw new ApiError(
      403,
      "E_FORBIDDEN",
      `${refusal}: api.token must be set in the device config (or FLEETLET_API_TOKEN)`,
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
