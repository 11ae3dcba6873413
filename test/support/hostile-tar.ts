/**
 * Tar bytes no honest tool writes: raw headers with any type flag and any
 * numbers, pax headers with any records, and archives too large to hold in
 * memory, generated as streams. For the hostile-layer tests.
 */
import { Readable } from "node:stream";
import { createGzip } from "node:zlib";
import { END_OF_ARCHIVE, entryHeader, padding } from "../../agent/store/tar-writer.js";

export interface RawHeader {
  name: string;
  /** The type flag: "0" file, "5" dir, "x" pax, "g" global pax, "L" GNU long name, anything at all. */
  flag: string;
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
}

const octal = (value: number, len: number) => `${value.toString(8).padStart(len - 1, "0")}\0`;

/** One 512-byte ustar header block with a correct checksum. */
export function rawHeader(h: RawHeader): Buffer {
  const b = Buffer.alloc(512);
  b.write(h.name, 0, 100, "utf8");
  b.write(octal(h.mode ?? 0o644, 8), 100, "latin1");
  b.write(octal(h.uid ?? 0, 8), 108, "latin1");
  b.write(octal(h.gid ?? 0, 8), 116, "latin1");
  b.write(octal(h.size ?? 0, 12), 124, "latin1");
  b.write(octal(h.mtime ?? 0, 12), 136, "latin1");
  b.write(h.flag, 156, "latin1");
  b.write(h.linkname ?? "", 157, 100, "utf8");
  b.write("ustar\u000000", 257, "latin1");
  b.write(octal(h.devmajor ?? 0, 8), 329, "latin1");
  b.write(octal(h.devminor ?? 0, 8), 337, "latin1");
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[i]!;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return b;
}

/** A pax record, "LEN key=value\n", its length counting itself. */
export function paxRecord(key: string, value: string | Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from("\n")]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

/** A pax header (flag "x", or "g" for a global one) carrying exactly these records. */
export function paxHeader(records: [string, string | Buffer][], flag: "x" | "g" = "x"): Buffer {
  const body = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
  return Buffer.concat([rawHeader({ name: "PaxHeader", flag, size: body.length }), body, padding(body.length)]);
}

/** A regular file entry with its body and padding. */
export function fileEntry(name: string, body: Buffer, extra: Partial<RawHeader> = {}): Buffer {
  return Buffer.concat([rawHeader({ name, flag: "0", size: body.length, ...extra }), body, padding(body.length)]);
}

/** `count` header blocks from `make(i)`, batched, as a stream that never holds the archive. */
export function headerStream(count: number, make: (i: number) => Buffer, trailer = END_OF_ARCHIVE): Readable {
  function* generate(): Generator<Buffer> {
    let batch: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      batch.push(make(i));
      if (batch.length === 512) {
        yield Buffer.concat(batch);
        batch = [];
      }
    }
    batch.push(trailer);
    yield Buffer.concat(batch);
  }
  return Readable.from(generate(), { objectMode: false });
}

/** A file entry `name` of `size` zero bytes, its body streamed in 1 MiB pieces, then more zeros after the archive. */
export function zeroFileStream(name: string, size: number, after = 0): Readable {
  function* generate(): Generator<Buffer> {
    yield entryHeader({ name, type: "file", size });
    const chunk = Buffer.alloc(1 << 20);
    for (let left = size; left > 0; left -= chunk.length) yield left >= chunk.length ? chunk : chunk.subarray(0, left);
    yield padding(size);
    yield END_OF_ARCHIVE;
    for (let left = after; left > 0; left -= chunk.length) yield left >= chunk.length ? chunk : chunk.subarray(0, left);
  }
  return Readable.from(generate(), { objectMode: false });
}

/** The whole of a stream, gzipped, in memory (for bombs: their gzip is small). */
export async function gzipAll(source: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of source.pipe(createGzip({ level: 9 }))) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

export { buildTar, END_OF_ARCHIVE, entryHeader, padding } from "../../agent/store/tar-writer.js";
