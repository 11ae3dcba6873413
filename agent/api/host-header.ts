/**
 * The defence against DNS rebinding: a web page on the device's browser can
 * point a name it controls at 127.0.0.1 and then read the endpoint as its
 * own origin, but the browser still sends that name in `Host`. Over TCP the
 * endpoint therefore answers only requests addressed to an IP literal or to
 * `localhost`, with or without a port; over the unix socket no browser can
 * reach it, and `Host` does not matter.
 */
import type { IncomingMessage } from "node:http";
import { isIP } from "node:net";
import { ApiError } from "./api-reply.js";

/** True for "127.0.0.1", "[::1]:7780", "localhost:7780" and the like; false for any name but localhost. */
export function isAllowedHost(host: string | undefined): boolean {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(host ?? "");
  if (!m) return false;
  if (m[1] !== undefined) return isIP(m[1]) === 6;
  return isIP(m[2]!) === 4 || m[2]!.toLowerCase() === "localhost";
}

/** Throws 421 naming the refused Host unless it is allowed. */
export function requireAllowedHost(req: IncomingMessage): void {
  const host = req.headers.host;
  if (isAllowedHost(host)) return;
  const shown = host === undefined ? "no Host header" : `Host '${host.slice(0, 100)}'`;
  throw new ApiError(
    421,
    "E_HOST_NOT_ALLOWED",
    `${shown}: the status endpoint answers only requests addressed to an IP address or localhost (a defence against DNS rebinding); use http://127.0.0.1:<port>/ or the unix socket`,
  );
}
