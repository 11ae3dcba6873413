/**
 * A streaming tar reader: ustar headers, GNU long names and pax extended
 * headers. Written here rather than taken from a library because layers
 * carry binary xattr values (security.capability) in pax records, which the
 * common JavaScript tar parsers decode as UTF-8 and so corrupt.
 *
 * readTar() yields each entry's header and then its data in the chunks that
 * arrive, without copying them; the consumer handles one entry at a time.
 */
import { FleetError } from "../errors.js";
import { DEFAULT_LAYER_LIMITS, type LayerLimits } from "./layer-limits.js";
import { bad, checkRange, MAX_ID, MAX_TIME, parsePax, paxNumber } from "./pax-records.js";

export { parsePax } from "./pax-records.js";

export type TarType = "file" | "hardlink" | "symlink" | "char" | "block" | "dir" | "fifo";

export interface TarHeader {
  name: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number; // seconds
  linkname: string;
  devmajor: number;
  devminor: number;
  xattrs: Map<string, Buffer>;
}

export type TarEvent = { kind: "header"; header: TarHeader } | { kind: "data"; chunk: Buffer } | { kind: "end" };

const BLOCK = 512;
const TYPES: Record<string, TarType> = {
  "0": "file",
  "\0": "file",
  "7": "file",
  "1": "hardlink",
  "2": "symlink",
  "3": "char",
  "4": "block",
  "5": "dir",
  "6": "fifo",
};

function overLimit(why: string): FleetError {
  return new FleetError("E_LAYER_LIMIT", `${why}; the layer was refused`);
}

export type ReaderLimits = Pick<
  LayerLimits,
  "maxExtendedHeaderBytes" | "maxExtendedHeadersPerEntry" | "maxGlobalHeaders" | "maxGlobalRecords"
>;

function text(buf: Buffer, start: number, len: number): string {
  const field = buf.subarray(start, start + len);
  const nul = field.indexOf(0);
  return field.subarray(0, nul < 0 ? len : nul).toString("utf8");
}

function num(buf: Buffer, start: number, len: number): number {
  const field = buf.subarray(start, start + len);
  if (field[0]! & 0x80) {
    // base-256, for values that do not fit in octal
    let v = field[0]! & 0x7f;
    for (let i = 1; i < len; i++) v = v * 256 + field[i]!;
    if (!Number.isSafeInteger(v)) throw bad(`numeric field at offset ${start} is out of range`);
    return v;
  }
  const s = text(buf, start, len).trim();
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s)) throw bad(`bad numeric field "${s}"`);
  return Number.parseInt(s, 8);
}

function checksumOk(block: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : block[i]!;
  return sum === num(block, 148, 8);
}

/**
 * The archive's bytes as the reader asks for them: pulled from the source
 * until n are buffered, then taken exactly (headers) or as they arrived
 * (data, without copying).
 */
class ByteQueue {
  private chunks: Buffer[] = [];
  private readonly it: AsyncIterator<Buffer>;
  private done = false;
  length = 0;

  constructor(source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]();
  }

  /** True once n bytes are buffered; false when the source ended first. */
  async fill(n: number): Promise<boolean> {
    while (this.length < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else this.push(r.value);
    }
    return this.length >= n;
  }

  /** Reads the source to its end, discarding what comes. */
  async drain(): Promise<void> {
    while (!this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
    }
  }

  private push(b: Buffer): void {
    if (b.length) {
      this.chunks.push(b);
      this.length += b.length;
    }
  }

  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.length -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, k);
      filled += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.length -= n;
    return out;
  }

  /** Up to n bytes without copying. */
  takeSome(n: number): Buffer {
    return this.take(Math.min(n, this.chunks[0]!.length));
  }
}

/** What extended headers (pax, GNU long names) say about the entries after them. */
interface Extensions {
  /** The next entry's pax records. */
  pax: Map<string, Buffer> | undefined;
  /** Pax records for every entry that follows. */
  globalPax: Map<string, Buffer>;
  longName: string | undefined;
  longLink: string | undefined;
  /** Extended headers read since the last entry, and global ones in all. */
  pending: number;
  globals: number;
}

const EXTENDED_FLAGS = new Set(["x", "g", "L", "K"]);

async function readExtension(
  q: ByteQueue,
  ext: Extensions,
  flag: string,
  size: number,
  limits: ReaderLimits,
): Promise<void> {
  if (size > limits.maxExtendedHeaderBytes)
    throw overLimit(`an extended header of ${size} bytes (at most ${limits.maxExtendedHeaderBytes})`);
  if (++ext.pending > limits.maxExtendedHeadersPerEntry)
    throw overLimit(`more than ${limits.maxExtendedHeadersPerEntry} extended headers before one entry`);
  if (flag === "g" && ++ext.globals > limits.maxGlobalHeaders)
    throw overLimit(`more than ${limits.maxGlobalHeaders} global pax headers`);
  const padded = Math.ceil(size / BLOCK) * BLOCK;
  if (!(await q.fill(padded))) throw bad("truncated extended header");
  const body = Buffer.from(q.take(padded).subarray(0, size));
  if (flag === "x") ext.pax = parsePax(body);
  else if (flag === "g") {
    ext.globalPax = new Map([...ext.globalPax, ...parsePax(body)]);
    if (ext.globalPax.size > limits.maxGlobalRecords)
      throw overLimit(`more than ${limits.maxGlobalRecords} records in global pax headers`);
  } else if (flag === "L") ext.longName = text(body, 0, size);
  else ext.longLink = text(body, 0, size);
}

/** The entry's header: the ustar fields, overridden by what the extended headers said (which then no longer apply). */
function entryHeader(block: Buffer, type: TarType, size: number, ext: Extensions): TarHeader {
  const records = new Map([...ext.globalPax, ...(ext.pax ?? [])]);
  const prefix = text(block, 345, 155);
  const ustarName =
    prefix && text(block, 257, 5) === "ustar" ? `${prefix}/${text(block, 0, 100)}` : text(block, 0, 100);
  const str = (k: string) => records.get(k)?.toString("utf8");
  const header: TarHeader = {
    name: str("path") ?? ext.longName ?? ustarName,
    type,
    mode: num(block, 100, 8) & 0o7777,
    uid: paxNumber(records, "uid", [0, MAX_ID]) ?? checkRange(num(block, 108, 8), "uid", MAX_ID),
    gid: paxNumber(records, "gid", [0, MAX_ID]) ?? checkRange(num(block, 116, 8), "gid", MAX_ID),
    size: paxNumber(records, "size", [0, Number.MAX_SAFE_INTEGER]) ?? size,
    mtime:
      paxNumber(records, "mtime", [-MAX_TIME, MAX_TIME], true) ?? checkRange(num(block, 136, 12), "mtime", MAX_TIME),
    linkname: str("linkpath") ?? ext.longLink ?? text(block, 157, 100),
    devmajor: num(block, 329, 8),
    devminor: num(block, 337, 8),
    xattrs: new Map([...records].filter(([k]) => k.startsWith("SCHILY.xattr.")).map(([k, v]) => [k.slice(13), v])),
  };
  ext.pax = undefined;
  ext.longName = undefined;
  ext.longLink = undefined;
  ext.pending = 0;
  return header;
}

/** The entry's data in the chunks that arrive, then past its padding (and past the body of a non-file that has one). */
async function* entryData(q: ByteQueue, header: TarHeader, size: number): AsyncGenerator<TarEvent> {
  const dataSize = header.type === "file" ? header.size : 0;
  let left = dataSize;
  while (left > 0) {
    if (!(await q.fill(1))) throw bad(`truncated data of ${header.name}`);
    const chunk = q.takeSome(left);
    left -= chunk.length;
    yield { kind: "data", chunk };
  }
  const padded = Math.ceil(size / BLOCK) * BLOCK;
  // Skipped as it arrives, never buffered whole: a directory may claim a body of gigabytes.
  let skip = Math.ceil(dataSize / BLOCK) * BLOCK - dataSize + (header.type === "file" ? 0 : padded);
  while (skip > 0) {
    if (!(await q.fill(1))) throw bad(`truncated padding after ${header.name}`);
    skip -= q.takeSome(skip).length;
  }
}

/** The archive's entries, each as a header, its data chunks, and an end. */
export async function* readTar(
  source: AsyncIterable<Buffer>,
  limits: ReaderLimits = DEFAULT_LAYER_LIMITS,
): AsyncGenerator<TarEvent> {
  const q = new ByteQueue(source);
  const ext: Extensions = {
    pax: undefined,
    globalPax: new Map(),
    longName: undefined,
    longLink: undefined,
    pending: 0,
    globals: 0,
  };
  for (;;) {
    if (!(await q.fill(BLOCK))) {
      if (q.length > 0) throw bad("truncated header");
      break; // end without the zero blocks: accepted, as GNU tar does
    }
    const block = q.take(BLOCK);
    if (block.every((b) => b === 0)) break;
    if (!checksumOk(block)) throw bad("header checksum mismatch");
    const flag = String.fromCharCode(block[156]!);
    const size = num(block, 124, 12);
    if (EXTENDED_FLAGS.has(flag)) {
      await readExtension(q, ext, flag, size, limits);
      continue;
    }
    const type = TYPES[flag];
    if (!type) throw bad(`unsupported entry type '${flag}'`);
    const header = entryHeader(block, type, size, ext);
    yield { kind: "header", header };
    yield* entryData(q, header, size);
    yield { kind: "end" };
  }
  // Whatever follows the end-of-archive blocks is read too, so that a
  // digest computed upstream covers every byte.
  await q.drain();
}
