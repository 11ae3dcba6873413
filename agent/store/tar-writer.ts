/**
 * Writes tar archives: ustar headers, with a pax header where a name, a link
 * target, a size or an xattr does not fit ustar. Used to build image layers
 * from a directory (`fleetctl push`) and, in tests, hand-made layers.
 */
import { createReadStream, lstatSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";

export interface TarEntry {
  name: string;
  type: "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo";
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  size?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Map<string, Buffer>;
}

const FLAGS = { file: "0", hardlink: "1", symlink: "2", char: "3", block: "4", dir: "5", fifo: "6" } as const;

function octal(value: number, len: number): string {
  return `${value.toString(8).padStart(len - 1, "0")}\0`;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from("\n")]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function ustar(e: TarEntry, name: string, linkname: string, size: number, flag: string): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, "utf8");
  b.write(octal(e.mode ?? (e.type === "dir" ? 0o755 : 0o644), 8), 100, "latin1");
  b.write(octal(e.uid ?? 0, 8), 108, "latin1");
  b.write(octal(e.gid ?? 0, 8), 116, "latin1");
  b.write(octal(size, 12), 124, "latin1");
  b.write(octal(Math.floor(e.mtime ?? 0), 12), 136, "latin1");
  b.write(flag, 156, "latin1");
  b.write(linkname, 157, 100, "utf8");
  b.write("ustar\u000000", 257, "latin1");
  b.write(octal(e.devmajor ?? 0, 8), 329, "latin1");
  b.write(octal(e.devminor ?? 0, 8), 337, "latin1");
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[i]!;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return b;
}

/** The header block(s) of one entry (its data and padding follow separately). */
export function entryHeader(e: TarEntry): Buffer {
  const name = e.type === "dir" && !e.name.endsWith("/") ? `${e.name}/` : e.name;
  const size = e.type === "file" ? (e.size ?? 0) : 0;
  const linkname = e.linkname ?? "";
  const records: Buffer[] = [];
  if (Buffer.byteLength(name) > 100) records.push(paxRecord("path", Buffer.from(name)));
  if (Buffer.byteLength(linkname) > 100) records.push(paxRecord("linkpath", Buffer.from(linkname)));
  if (size > 0o77777777777) records.push(paxRecord("size", Buffer.from(String(size))));
  for (const [k, v] of e.xattrs ?? []) records.push(paxRecord(`SCHILY.xattr.${k}`, v));
  const main = ustar(e, name.slice(0, 100), linkname.slice(0, 100), Math.min(size, 0o77777777777), FLAGS[e.type]);
  if (records.length === 0) return main;
  const pax = Buffer.concat(records);
  const paxHeader = ustar({ name: "", type: "file" }, "PaxHeader", "", pax.length, "x");
  return Buffer.concat([paxHeader, pax, padding(pax.length), main]);
}

export function padding(size: number): Buffer {
  return Buffer.alloc((512 - (size % 512)) % 512);
}

/** The two zero blocks that end an archive. */
export const END_OF_ARCHIVE = Buffer.alloc(1024);

/** Entries with in-memory bodies as one archive (for tests and small layers). */
export function buildTar(entries: (TarEntry & { body?: Buffer })[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const body = e.body ?? Buffer.alloc(0);
    parts.push(entryHeader({ ...e, size: e.type === "file" ? body.length : 0 }));
    if (e.type === "file") parts.push(body, padding(body.length));
  }
  parts.push(END_OF_ARCHIVE);
  return Buffer.concat(parts);
}

/**
 * Streams a directory tree as a tar archive, in sorted order for a
 * reproducible digest. Hard links within the tree are kept as hard links.
 */
export function packDirectory(root: string, opts: { mtime?: number } = {}): Readable {
  async function* generate(): AsyncGenerator<Buffer> {
    const seen = new Map<string, string>(); // dev:ino → first name, for hard links
    async function* walk(rel: string): AsyncGenerator<Buffer> {
      for (const name of readdirSync(join(root, rel)).sort()) {
        const path = rel ? `${rel}/${name}` : name;
        const full = join(root, path);
        const st = lstatSync(full);
        const base: TarEntry = {
          name: path,
          type: "file",
          mode: st.mode & 0o7777,
          uid: st.uid,
          gid: st.gid,
          mtime: opts.mtime ?? Math.floor(st.mtimeMs / 1000),
        };
        if (st.isDirectory()) {
          yield entryHeader({ ...base, type: "dir" });
          yield* walk(path);
        } else if (st.isSymbolicLink()) {
          yield entryHeader({ ...base, type: "symlink", linkname: readlinkSync(full) });
        } else if (st.isFile()) {
          const key = `${st.dev}:${st.ino}`;
          const first = st.nlink > 1 ? seen.get(key) : undefined;
          if (first) {
            yield entryHeader({ ...base, type: "hardlink", linkname: first });
            continue;
          }
          if (st.nlink > 1) seen.set(key, path);
          yield entryHeader({ ...base, size: st.size });
          let written = 0;
          for await (const chunk of createReadStream(full, { highWaterMark: 1 << 20 })) {
            written += (chunk as Buffer).length;
            yield chunk as Buffer;
          }
          if (written !== st.size) throw new Error(`${full} changed size while it was archived`);
          yield padding(st.size);
        } else if (st.isFIFO()) {
          yield entryHeader({ ...base, type: "fifo" });
        } else if (st.isCharacterDevice() || st.isBlockDevice()) {
          yield entryHeader({
            ...base,
            type: st.isCharacterDevice() ? "char" : "block",
            devmajor: Math.floor(st.rdev / 256) & 0xfff,
            devminor: (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00),
          });
        }
      }
    }
    yield* walk("");
    yield END_OF_ARCHIVE;
  }
  return Readable.from(generate(), { objectMode: false });
}
