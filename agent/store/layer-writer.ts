/**
 * Writes one layer's entries into its directory, one at a time as the tar
 * reader yields them. Whiteouts become overlayfs whiteouts (a 0/0 character
 * device; `trusted.overlay.opaque=y` for an opaque directory).
 *
 * Safety rests on one fact: the directory starts empty and only this code
 * writes into it, so the index knows every path in it. No entry may name a
 * path outside (absolute, `..`), pass through a symlink any entry planted,
 * hard-link to anything but a regular file of this layer, or white out
 * outside its directory. Block devices are refused, and character devices
 * other than the 0/0 whiteout: a device node in a layer would be a door to
 * the host's disks and memory for whoever reached it. Extended attributes
 * pass through the allow-list of xattr-policy.ts. A refused entry throws
 * E_UNSAFE_LAYER naming it; the caller removes the directory.
 */
import { chmodSync, lchownSync, linkSync, lutimesSync, mkdirSync, rmSync, symlinkSync, unlinkSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";
import { errnoName, FleetError } from "../errors.js";
import type { NativeCore } from "../system/native.js";
import type { DiskRoom } from "./disk-room.js";
import { type EntryKind, LayerIndex } from "./layer-index.js";
import type { LayerLimits } from "./layer-limits.js";
import type { TarHeader } from "./tar-reader.js";
import { XATTR_ALLOWED, XATTR_DROP_ERRNOS, type XattrDrops, xattrAllowed } from "./xattr-policy.js";

const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;

export function unsafe(entry: string, why: string): FleetError {
  return new FleetError("E_UNSAFE_LAYER", `entry "${entry}": ${why}; the layer was refused`);
}

/** Archive path → safe relative path ("" for the root), or a refusal. */
export function safeRelativePath(name: string, what = name): string {
  if (name.startsWith("/")) throw unsafe(what, "absolute paths are not allowed");
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw unsafe(what, "'..' would leave the layer");
  if (parts.some((p) => p.includes("\0"))) throw unsafe(what, "NUL in a name");
  return parts.join("/");
}

function entryKind(type: TarHeader["type"]): EntryKind {
  if (type === "dir") return "dir";
  if (type === "file" || type === "hardlink") return "file";
  return type === "symlink" ? "symlink" : "other";
}

export interface LayerWriterOptions {
  dest: string;
  native: NativeCore;
  limits: Pick<LayerLimits, "maxEntries">;
  disk: DiskRoom;
  xattrs: XattrDrops;
}

export class LayerWriter {
  private readonly index = new LayerIndex();
  private readonly dirTimes: [string, number][] = [];
  private file: FileHandle | undefined;
  private fileOffset = 0;
  /** Inodes made: entries, and the directories made for them. */
  private inodes = 0;
  entries = 0;
  bytes = 0;

  constructor(private readonly opts: LayerWriterOptions) {}

  private countInode(): void {
    if (++this.inodes > this.opts.limits.maxEntries) {
      throw new FleetError(
        "E_LAYER_LIMIT",
        `more than ${this.opts.limits.maxEntries} entries (files, links and directories, the most one layer may hold); the layer was refused`,
      );
    }
    this.opts.disk.claimEntry();
  }

  /** Makes sure every parent of rel is a directory this layer made, creating missing ones. */
  private parents(rel: string, entry: string): void {
    const blocked = this.index.ensureParents(rel, (path) => {
      this.countInode();
      mkdirSync(join(this.opts.dest, path), 0o755);
    });
    if (blocked)
      throw unsafe(
        entry,
        `its parent "${blocked.path}" is a ${blocked.kind === "symlink" ? "symlink" : "non-directory"}`,
      );
  }

  /** Clears whatever an earlier entry put at rel (the last entry for a path wins). */
  private replace(rel: string, next: EntryKind): void {
    const kind = this.index.kind(rel);
    if (kind === undefined || (kind === "dir" && next === "dir")) return;
    const full = join(this.opts.dest, rel);
    if (kind === "dir")
      rmSync(full, { recursive: true, force: true }); // never follows symlinks
    else unlinkSync(full);
    this.index.remove(rel);
  }

  private whiteout(rel: string, entry: string): void {
    const slash = rel.lastIndexOf("/");
    const dir = slash < 0 ? "" : rel.slice(0, slash);
    const base = rel.slice(slash + 1).slice(4);
    if (base === ".wh..opq") {
      this.parents(rel, entry);
      this.opts.native.setXattr(join(this.opts.dest, dir), "trusted.overlay.opaque", Buffer.from("y"));
      return;
    }
    if (base === "" || base === "." || base === "..")
      throw unsafe(entry, "the whiteout names no file of its directory");
    const target = dir ? `${dir}/${base}` : base;
    this.parents(target, entry);
    this.replace(target, "other");
    this.opts.native.mknod(join(this.opts.dest, target), S_IFCHR | 0o000, 0, 0);
    this.index.set(target, "other");
  }

  /** Device nodes: only the overlay whiteout (a 0/0 character device) gets in. */
  private checkDevice(h: TarHeader): void {
    if (h.type === "block")
      throw unsafe(h.name, `block device ${h.devmajor}:${h.devminor}: device nodes are not allowed in a layer`);
    if (h.type === "char" && (h.devmajor !== 0 || h.devminor !== 0))
      throw unsafe(
        h.name,
        `character device ${h.devmajor}:${h.devminor}: device nodes other than the 0:0 whiteout are not allowed in a layer`,
      );
  }

  async begin(h: TarHeader): Promise<void> {
    this.entries++;
    const rel = safeRelativePath(h.name);
    if (rel === "") return; // the layer root itself: nothing to create
    this.countInode();
    const base = rel.slice(rel.lastIndexOf("/") + 1);
    if (base.startsWith(".wh.")) return this.whiteout(rel, h.name);
    this.checkDevice(h);
    this.parents(rel, h.name);
    const full = join(this.opts.dest, rel);
    const kind = entryKind(h.type);
    this.replace(rel, kind);
    switch (h.type) {
      case "dir":
        if (this.index.kind(rel) === undefined) mkdirSync(full, 0o700);
        break;
      case "file":
        this.file = await open(full, "wx", 0o600);
        this.fileOffset = 0;
        break;
      case "symlink":
        if (h.linkname.includes("\0")) throw unsafe(h.name, "NUL in a link target");
        symlinkSync(h.linkname, full);
        break;
      case "hardlink": {
        const target = safeRelativePath(h.linkname, `${h.name} -> ${h.linkname}`);
        if (this.index.kind(target) !== "file")
          throw unsafe(h.name, `a hard link may only point at a regular file of this layer, not "${h.linkname}"`);
        linkSync(join(this.opts.dest, target), full);
        this.index.set(rel, "file");
        return; // a hard link shares its target's inode: no metadata of its own
      }
      case "char":
      case "fifo":
        this.opts.native.mknod(full, (h.type === "char" ? S_IFCHR : S_IFIFO) | 0o600, 0, 0);
        break;
    }
    this.index.set(rel, kind);
    if (h.type !== "file") this.finish(h, rel);
  }

  async data(chunk: Buffer): Promise<void> {
    if (!this.file) return; // the body of an entry that makes no file (the root, a whiteout): read, not kept
    this.opts.disk.claim(chunk.length);
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
    const full = join(this.opts.dest, rel);
    lchownSync(full, h.uid, h.gid);
    if (h.type !== "symlink") chmodSync(full, h.mode);
    for (const [name, value] of h.xattrs) this.applyXattr(h.name, full, name, value);
    if (h.type === "dir") this.dirTimes.push([full, h.mtime]);
    else lutimesSync(full, h.mtime, h.mtime);
  }

  private applyXattr(entry: string, full: string, name: string, value: Buffer): void {
    if (!xattrAllowed(name)) {
      this.opts.xattrs.drop(entry, name, `only ${XATTR_ALLOWED} are applied`);
      return;
    }
    try {
      this.opts.native.setXattr(full, name, value);
    } catch (err) {
      const code = errnoName(err);
      if (!code || !XATTR_DROP_ERRNOS.has(code)) throw err;
      this.opts.xattrs.drop(entry, name, `the filesystem refused it (${code})`);
    }
  }

  /** Directory times last: writing into a directory changes its mtime. */
  close(): void {
    for (const [full, mtime] of this.dirTimes.reverse()) lutimesSync(full, mtime, mtime);
  }

  async abort(): Promise<void> {
    await this.file?.close();
    this.file = undefined;
  }
}
