/**
 * Blobs by digest, and the partial downloads ("ingests") that become them.
 * This is the one place that decides whether a blob is complete and
 * verified: `Ingest.commit()` checks the size and the sha256 of every byte,
 * fsyncs, and renames into `blobs/sha256/<hex>`. Nothing else writes there,
 * so a blob that exists is a verified blob. A power cut leaves either that
 * or a partial in `ingest/` that the next pull resumes.
 */
import {
  constants,
  createReadStream,
  existsSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
} from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { isErrno } from "../errors.js";
import type { NativeBlobWriter, NativeCore } from "../system/native.js";
import { privateDir } from "../system/state-root.js";
import { digestHex, sha256Digest } from "./digest.js";
import { Ingest } from "./ingest.js";
import { IngestLocks } from "./ingest-lock.js";

export class ContentStore {
  readonly blobsDir: string;
  readonly ingestDir: string;
  private readonly locks: IngestLocks;

  private readonly native: Pick<NativeCore, "BlobWriter">;

  /**
   * `startTime`: the native core's, which names a process for good together
   * with its pid (the ingest locks' holders); `BlobWriter`: its writer that
   * writes and hashes a download off the event loop.
   */
  constructor(root: string, native: Pick<NativeCore, "startTime" | "BlobWriter">) {
    this.native = native;
    this.blobsDir = join(root, "blobs", "sha256");
    this.ingestDir = join(root, "ingest");
    // Root's alone (0700): a blob is an image's content, a layer's setuid files included.
    privateDir(join(root, "blobs"));
    privateDir(this.blobsDir);
    privateDir(this.ingestDir);
    this.locks = new IngestLocks(this.ingestDir, native);
  }

  blobPath(digest: string): string {
    return join(this.blobsDir, digestHex(digest));
  }

  has(digest: string): boolean {
    return existsSync(this.blobPath(digest));
  }

  size(digest: string): number {
    return statSync(this.blobPath(digest)).size;
  }

  /**
   * A small blob's bytes (a manifest, a config) if the store has it, it is
   * at most `maxBytes` and it still hashes to its digest; undefined
   * otherwise. A copy that no longer does (damaged on disk since it was
   * stored) is removed, so that the next put stores a good one.
   */
  readSmall(digest: string, maxBytes: number): Buffer | undefined {
    const path = this.blobPath(digest);
    let bytes: Buffer;
    try {
      if (statSync(path).size > maxBytes) return undefined;
      bytes = readFileSync(path);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return undefined; // never stored, or collected meanwhile
      throw err;
    }
    if (sha256Digest(bytes) === digest) return bytes;
    this.delete(digest);
    return undefined;
  }

  createReadStream(digest: string, opts: { highWaterMark?: number } = {}): Readable {
    return createReadStream(this.blobPath(digest), { highWaterMark: opts.highWaterMark ?? 1 << 20 });
  }

  /** Stores a small blob held in memory (a manifest, a config), verified first. */
  async put(digest: string, data: Buffer): Promise<void> {
    if (this.has(digest)) return;
    // Another process may be storing the same manifest or config right now: one writer at a time.
    const release = await this.lockIngest(digest);
    try {
      if (this.has(digest)) return;
      const ingest = await this.openIngest(digest, data.length, { restart: true });
      try {
        await ingest.write(data);
        await ingest.commit();
      } finally {
        await ingest.close();
      }
    } finally {
      release();
    }
  }

  /** Bytes of `digest` already downloaded and kept for resuming. */
  partialSize(digest: string): number {
    try {
      return statSync(this.partialPath(digest)).size;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return 0;
      throw err;
    }
  }

  partialPath(digest: string): string {
    return join(this.ingestDir, `${digestHex(digest)}.partial`);
  }

  /**
   * Takes the partial of `digest` for this process: one writer at a time,
   * across processes; resolves with the release function.
   */
  lockIngest(digest: string, signal?: AbortSignal): Promise<() => void> {
    return this.locks.lock(digest, signal);
  }

  /** The lock of `digest`'s partial if no live process holds it, else undefined. */
  tryLockIngest(digest: string): (() => void) | undefined {
    return this.locks.tryLock(digest);
  }

  /**
   * Opens the partial download of `digest`, re-hashing what is already on
   * disk so that the download resumes where it stopped.
   */
  async openIngest(digest: string, expectedSize: number, opts: { restart?: boolean } = {}): Promise<Ingest> {
    const path = this.partialPath(digest);
    // Not O_APPEND ("a+"): the writer's pwritev would ignore its position under it.
    const fh = await open(path, opts.restart ? "w" : constants.O_RDWR | constants.O_CREAT);
    let writer: NativeBlobWriter;
    let offset = 0;
    try {
      writer = new this.native.BlobWriter(fh.fd);
      const { size } = await fh.stat();
      if (size > expectedSize) {
        await fh.truncate(0); // longer than the blob can be: nothing in it is trustworthy
      } else if (size > 0) {
        await writer.hashFile(size);
        offset = size;
      }
    } catch (err) {
      await fh.close();
      throw err;
    }
    const adopt = (file: string, d: string) => this.adopt(file, d);
    return new Ingest({ adopt, digest, expectedSize, path, fh, writer, offset });
  }

  delete(digest: string): void {
    try {
      unlinkSync(this.blobPath(digest));
    } catch (err) {
      if (!isErrno(err, "ENOENT")) throw err;
    }
  }

  list(): string[] {
    return readdirSync(this.blobsDir)
      .filter((n) => /^[a-f0-9]{64}$/.test(n))
      .map((n) => `sha256:${n}`);
  }

  /** Partial downloads as [digest, path]. */
  partials(): [string, string][] {
    return readdirSync(this.ingestDir)
      .filter((n) => /^[a-f0-9]{64}\.partial$/.test(n))
      .map((n) => [`sha256:${n.slice(0, 64)}`, join(this.ingestDir, n)]);
  }

  /** Called by Ingest.commit once the bytes are verified. */
  async adopt(path: string, digest: string): Promise<void> {
    renameSync(path, this.blobPath(digest));
    const dir = await open(this.blobsDir, "r");
    try {
      await dir.sync(); // the rename itself survives a power cut
    } finally {
      await dir.close();
    }
  }
}
