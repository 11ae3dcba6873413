/**
 * Unpacks one layer into an empty directory, streaming: decompress, hash
 * the tar (the diff id), and write entries as they come. Whiteouts become
 * overlayfs whiteouts (a 0/0 character device; `trusted.overlay.opaque=y`
 * for an opaque directory).
 *
 * Safety rests on one fact: the directory starts empty and only this code
 * writes into it, so `kinds` knows every path in it. No entry may name a
 * path outside (absolute, `..`), pass through a symlink any entry planted,
 * hard-link to anything but a regular file of this layer, or white out
 * outside its directory. A refused entry throws E_UNSAFE_LAYER naming it;
 * the caller removes the directory.
 */
import { createHash } from "node:crypto";
import { chmodSync, lchownSync, linkSync, lutimesSync, mkdirSync, rmSync, symlinkSync, unlinkSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";
import { pipeline, type Readable, Transform } from "node:stream";
import { createGunzip } from "node:zlib";
import { FleetError } from "../errors.js";
import type { NativeCore } from "../system/native.js";
import { readTar, type TarHeader } from "./tar-reader.js";

export type EntryKind = "dir" | "file" | "symlink" | "other";

export interface UnpackResult {
  diffId: string;
  entries: number;
  bytes: number;
}

const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;

export function layerCompression(mediaType: string): "gzip" | "none" {
  if (/tar\+gzip$|tar\.gzip$|diff\.tar\.gzip$/.test(mediaType) || mediaType.endsWith(".tar.gzip")) return "gzip";
  if (/\.tar$|layer\.v1\.tar$|rootfs\.diff\.tar$/.test(mediaType)) return "none";
  if (mediaType.endsWith("+zstd")) {
    throw new FleetError(
      "E_UNSUPPORTED",
      `layer media type ${mediaType}: zstd layers are not supported by this build (Node 20 has no zstd); publish the image with gzip layers`,
    );
  }
  throw new FleetError("E_UNSUPPORTED", `layer media type ${mediaType} is not one fleetlet knows how to unpack`);
}

function unsafe(entry: string, why: string): FleetError {
  return new FleetError("E_UNSAFE_LAYER", `layer entry "${entry}": ${why}; the layer was refused`);
}

/** Archive path → safe relative path ("" for the root), or a refusal. */
export function safeRelativePath(name: string, what = name): string {
  if (name.startsWith("/")) throw unsafe(what, "absolute paths are not allowed");
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw unsafe(what, "'..' would leave the layer");
  if (parts.some((p) => p.includes("\0"))) throw unsafe(what, "NUL in a name");
  return parts.join("/");
}

class LayerWriter {
  readonly kinds = new Map<string, EntryKind>([["", "dir"]]);
  private readonly dirTimes: [string, number][] = [];
  private file: FileHandle | undefined;
  private fileOffset = 0;
  entries = 0;
  bytes = 0;

  constructor(
    private readonly dest: string,
    private readonly native: NativeCore,
  ) {}

  /** Makes sure every parent of rel is a directory this layer made, creating missing ones. */
  private parents(rel: string, entry: string): void {
    const parts = rel.split("/");
    let path = "";
    for (const part of parts.slice(0, -1)) {
      path = path ? `${path}/${part}` : part;
      const kind = this.kinds.get(path);
      if (kind === undefined) {
        mkdirSync(join(this.dest, path), 0o755);
        this.kinds.set(path, "dir");
      } else if (kind !== "dir") {
        throw unsafe(entry, `its parent "${path}" is a ${kind === "symlink" ? "symlink" : "non-directory"}`);
      }
    }
  }

  /** Clears whatever an earlier entry put at rel (the last entry for a path wins). */
  private replace(rel: string, next: EntryKind): void {
    const kind = this.kinds.get(rel);
    if (kind === undefined || (kind === "dir" && next === "dir")) return;
    const full = join(this.dest, rel);
    if (kind === "dir") {
      rmSync(full, { recursive: true, force: true }); // never follows symlinks
      for (const k of [...this.kinds.keys()]) if (k.startsWith(`${rel}/`)) this.kinds.delete(k);
    } else {
      unlinkSync(full);
    }
    this.kinds.delete(rel);
  }

  private whiteout(rel: string, entry: string): void {
    const slash = rel.lastIndexOf("/");
    const dir = slash < 0 ? "" : rel.slice(0, slash);
    const base = rel.slice(slash + 1).slice(4);
    if (base === ".wh..opq") {
      this.parents(`${rel}`, entry);
      this.native.setXattr(join(this.dest, dir), "trusted.overlay.opaque", Buffer.from("y"));
      return;
    }
    if (base === "" || base === "." || base === ".." || base.includes("/"))
      throw unsafe(entry, "the whiteout names no file of its directory");
    const target = dir ? `${dir}/${base}` : base;
    this.parents(target, entry);
    this.replace(target, "other");
    this.native.mknod(join(this.dest, target), S_IFCHR | 0o000, 0, 0);
    this.kinds.set(target, "other");
  }

  async begin(h: TarHeader): Promise<void> {
    this.entries++;
    const rel = safeRelativePath(h.name);
    if (rel === "") return; // the layer root itself: nothing to create
    const base = rel.slice(rel.lastIndexOf("/") + 1);
    if (base.startsWith(".wh.")) return this.whiteout(rel, h.name);
    this.parents(rel, h.name);
    const full = join(this.dest, rel);
    const kind: EntryKind =
      h.type === "dir"
        ? "dir"
        : h.type === "file" || h.type === "hardlink"
          ? "file"
          : h.type === "symlink"
            ? "symlink"
            : "other";
    this.replace(rel, kind);
    switch (h.type) {
      case "dir":
        if (!this.kinds.has(rel)) mkdirSync(full, 0o700);
        break;
      case "file":
        this.file = await open(full, "wx", 0o600);
        this.fileOffset = 0;
        break;
      case "symlink":
        symlinkSync(h.linkname, full);
        break;
      case "hardlink": {
        const target = safeRelativePath(h.linkname, `${h.name} -> ${h.linkname}`);
        if (this.kinds.get(target) !== "file")
          throw unsafe(h.name, `a hard link may only point at a regular file of this layer, not "${h.linkname}"`);
        linkSync(join(this.dest, target), full);
        this.kinds.set(rel, "file");
        return; // a hard link shares its target's inode: no metadata of its own
      }
      case "char":
      case "block":
      case "fifo": {
        const type = h.type === "char" ? S_IFCHR : h.type === "block" ? S_IFBLK : S_IFIFO;
        this.native.mknod(full, type | 0o600, h.devmajor, h.devminor);
        break;
      }
    }
    this.kinds.set(rel, kind);
    if (h.type !== "file") this.finish(h, rel);
  }

  async data(chunk: Buffer): Promise<void> {
    let done = 0;
    while (done < chunk.length) {
      const { bytesWritten } = await this.file!.write(chunk, done, chunk.length - done, this.fileOffset + done);
      done += bytesWritten;
    }
    this.fileOffset += chunk.length;
    this.bytes += chunk.length;
  }

  async end(h: TarHeader): Promise<void> {
    if (!this.file) return;
    await this.file.close();
    this.file = undefined;
    this.finish(h, safeRelativePath(h.name));
  }

  /** Ownership, then mode (chown clears setuid), then xattrs (chown clears capabilities), then times. */
  private finish(h: TarHeader, rel: string): void {
    const full = join(this.dest, rel);
    lchownSync(full, h.uid, h.gid);
    if (h.type !== "symlink") chmodSync(full, h.mode);
    for (const [name, value] of h.xattrs) this.native.setXattr(full, name, value);
    if (h.type === "dir") this.dirTimes.push([full, h.mtime]);
    else lutimesSync(full, h.mtime, h.mtime);
  }

  /** Directory times last: writing into a directory changes its mtime. */
  close(): void {
    for (const [full, mtime] of this.dirTimes.reverse()) lutimesSync(full, mtime, mtime);
  }

  async abort(): Promise<void> {
    await this.file?.close();
  }
}

/**
 * Unpacks `source` (the blob's bytes) into `dest`, which must exist and be
 * empty. Resolves with the diff id: the sha256 of the uncompressed tar.
 */
export async function unpackLayer(
  source: Readable,
  opts: { dest: string; mediaType: string; native: NativeCore; signal?: AbortSignal },
): Promise<UnpackResult> {
  const compression = layerCompression(opts.mediaType);
  const hash = createHash("sha256");
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  // pipeline() carries an error from any stage to the last, where the reader sees it.
  const stages: NodeJS.ReadWriteStream[] =
    compression === "gzip" ? [createGunzip({ chunkSize: 256 * 1024 }), tap] : [tap];
  const decompressed = tap;
  pipeline(source, ...(stages as [NodeJS.ReadWriteStream]), () => {
    // errors surface through the iteration of `decompressed` below
  });
  const writer = new LayerWriter(opts.dest, opts.native);
  let current: TarHeader | undefined;
  try {
    for await (const ev of readTar(decompressed)) {
      opts.signal?.throwIfAborted();
      if (ev.kind === "header") {
        current = ev.header;
        await writer.begin(ev.header);
      } else if (ev.kind === "data") await writer.data(ev.chunk);
      else await writer.end(current!);
    }
    writer.close();
  } catch (err) {
    await writer.abort();
    decompressed.destroy();
    if (
      (err as NodeJS.ErrnoException).code === "Z_DATA_ERROR" ||
      (err as NodeJS.ErrnoException).code === "Z_BUF_ERROR"
    ) {
      throw new FleetError("E_UNSAFE_LAYER", `layer is not valid gzip: ${(err as Error).message}`, { cause: err });
    }
    throw err;
  }
  return { diffId: `sha256:${hash.digest("hex")}`, entries: writer.entries, bytes: writer.bytes };
}
