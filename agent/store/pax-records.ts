/**
 * pax extended header records ("LEN key=value\n", POSIX.1-2001) and the
 * numbers a tar header carries, checked: a layer's numbers go to chown,
 * chmod and utimes, so each must be a decimal integer in range, never
 * whatever Number() makes of a string.
 */
import { FleetError } from "../errors.js";

export function bad(why: string): FleetError {
  return new FleetError("E_UNSAFE_LAYER", `not a valid tar archive: ${why}`);
}

/** pax records: "LEN key=value\n"; values stay bytes (xattrs may be binary). */
export function parsePax(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < buf.length) {
    const space = buf.indexOf(0x20, pos);
    if (space < 0) break;
    const digits = buf.subarray(pos, space).toString("latin1");
    const len = /^[0-9]{1,9}$/.test(digits) ? Number(digits) : Number.NaN;
    if (!(len > space - pos + 1) || pos + len > buf.length || buf[pos + len - 1] !== 0x0a)
      throw bad("bad pax record length");
    const record = buf.subarray(space + 1, pos + len - 1); // without the trailing newline
    const eq = record.indexOf(0x3d);
    if (eq < 0) throw bad("pax record without '='");
    out.set(record.subarray(0, eq).toString("utf8"), record.subarray(eq + 1));
    pos += len;
  }
  return out;
}

/** A pax number: decimal digits (a fraction, for times), within [min, max]. */
export function paxNumber(
  records: Map<string, Buffer>,
  key: string,
  range: [number, number],
  fraction = false,
): number | undefined {
  const raw = records.get(key);
  if (raw === undefined) return undefined;
  const text = raw.toString("latin1");
  const shape = fraction ? /^-?[0-9]{1,20}(\.[0-9]{0,12})?$/ : /^[0-9]{1,20}$/;
  const value = shape.test(text) ? Math.floor(Number(text)) : Number.NaN;
  if (!(value >= range[0] && value <= range[1]))
    throw bad(
      `pax ${key} "${text.slice(0, 40)}" is not a ${fraction ? "number" : "decimal integer"} from ${range[0]} to ${range[1]}`,
    );
  return value;
}

/** Ids chown(2) can set: -1 (0xffffffff) means "leave it". */
export const MAX_ID = 0xfffffffe;
export const MAX_TIME = 2 ** 40;

export function checkRange(value: number, what: string, max: number, min = 0): number {
  if (!(value >= min && value <= max)) throw bad(`${what} ${value} is out of range`);
  return value;
}
