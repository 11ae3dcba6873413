/**
 * JSON Canonicalization Scheme (RFC 8785): the one byte string a JSON value
 * signs as. Object members are sorted by their names' UTF-16 code units, no
 * whitespace is written, and strings and numbers are serialised as
 * ECMAScript's JSON.stringify does (which is what the RFC specifies). The
 * RFC takes I-JSON (RFC 7493), which forbids lone surrogates: a string or a
 * member name holding one has no UTF-8 form and is refused here too.
 */
import { FleetError } from "../errors.js";

/** A high surrogate not followed by a low one, or a low one not preceded by a high one. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function canonicalString(text: string, path: string, what: string): string {
  const lone = LONE_SURROGATE.exec(text);
  if (lone) {
    const unit = lone[0].charCodeAt(0).toString(16).toUpperCase();
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `${path}: ${what} holds a lone surrogate (U+${unit} at index ${lone.index}), which has no UTF-8 form; RFC 8785 refuses it`,
    );
  }
  return JSON.stringify(text);
}

/** `$.a.b`, or `$["odd key"]` for a name that is not plain, so a path in a message reads unambiguously. */
const memberPath = (path: string, key: string) =>
  /^[A-Za-z0-9_][A-Za-z0-9_-]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;

export function canonicalJson(value: unknown, path = "$"): string {
  if (value === null || typeof value === "boolean") return JSON.stringify(value);
  if (typeof value === "string") return canonicalString(value, path, "the string");
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
    const member = (k: string) =>
      `${canonicalString(k, path, "a member name")}:${canonicalJson((value as Record<string, unknown>)[k], memberPath(path, k))}`;
    return `{${keys.map(member).join(",")}}`;
  }
  throw new FleetError("E_INVALID_ARGUMENT", `${path}: a ${typeof value} has no JSON form`);
}
