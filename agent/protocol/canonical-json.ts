/**
 * JSON Canonicalization Scheme (RFC 8785): the one byte string a JSON value
 * signs as. Object members are sorted by their names' UTF-16 code units, no
 * whitespace is written, and strings and numbers are serialised as
 * ECMAScript's JSON.stringify does (which is what the RFC specifies).
 */
import { FleetError } from "../errors.js";

export function canonicalJson(value: unknown, path = "$"): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new FleetError("E_INVALID_ARGUMENT", `${path}: ${value} has no JSON form`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value))
    return `[${value.map((v, i) => canonicalJson(v === undefined ? null : v, `${path}[${i}]`)).join(",")}]`;
  if (typeof value === "object") {
    // Default sort compares UTF-16 code units, as RFC 8785 section 3.2.3 asks.
    const keys = Object.keys(value as object)
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k], `${path}.${k}`)}`).join(",")}}`;
  }
  throw new FleetError("E_INVALID_ARGUMENT", `${path}: a ${typeof value} has no JSON form`);
}
