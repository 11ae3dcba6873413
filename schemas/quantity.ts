/**
 * Byte quantities as people write them: "32Mi", "64M", "512k", "1.5G" or a
 * plain number of bytes. As in Docker and Kubernetes memory limits, the
 * single-letter suffixes are binary (m = MiB); "KB", "MB" and "GB" are decimal.
 */
import * as z from "./zod.js";

const UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  ki: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mi: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gi: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  ti: 1024 ** 4,
  tib: 1024 ** 4,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  tb: 1000 ** 4,
};

/** Parses a byte quantity; returns undefined when the text is not one. */
export function parseBytes(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const unit = UNITS[m[2]!.toLowerCase()];
  if (unit === undefined) return undefined;
  const value = Math.round(Number(m[1]) * unit);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** Formats bytes with binary units, for messages: 33554432 -> "32 MiB". */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text} ${units[i]}`;
}

/** A zod field that takes "32Mi" or a number of bytes and yields bytes. */
export const byteQuantity = z.pipe(
  z.union([z.number().check(z.int(), z.nonnegative()), z.string()]),
  z.transform((v: number | string, ctx) => {
    if (typeof v === "number") return v;
    const bytes = parseBytes(v);
    if (bytes === undefined) {
      ctx.issues.push({
        code: "custom",
        input: v,
        message: `expected a byte quantity such as 32Mi, 512k or 1G, got "${v}"`,
      });
      return z.NEVER;
    }
    return bytes;
  }),
);
