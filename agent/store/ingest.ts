/**
 * One partial blob being written: every byte is hashed as it lands (both on
 * a worker thread, by the native core's BlobWriter), and `commit()` is the
 * check that makes it a blob (size and sha256), handing it to the content
 * store only when both hold.
 */
import { unlinkSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import type { Writable } from "node:stream";
import { errnoName, FleetError } from "../errors.js";
import type { NativeBlobWriter, NativeReceive } from "../system/native.js";

/** A body that writes into the ingest's file and hash itself (a native HTTP body, registry/blob-http.ts). */
export interface BodySource {
  receive(writer: NativeBlobWriter, position: number, want: number, copy?: Buffer): Promise<NativeReceive>;
}

interface IngestInit {
  /** Moves the verified file into the store as the blob `digest`. */
  adopt(path: string, digest: string): Promise<void>;
  digest: string;
  expectedSize: number;
  path: string;
  fh: FileHandle;
  /** Over fh, holding the hash of its first `offset` bytes. */
  writer: NativeBlobWriter;
  offset: number;
}

/** Until `stream` drains, or is destroyed (its reader gave up). */
function drained(stream: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
}

/** One partial blob being written. */
export class Ingest {
  readonly digest: string;
  readonly expectedSize: number;
  private readonly adopt: IngestInit["adopt"];
  private readonly path: string;
  private readonly fh: FileHandle;
  private readonly writer: NativeBlobWriter;
  private written: number;
  private closed = false;
  /** A stream given every byte of the blob from its first, as it reaches the disk (follow()). */
  private follower: Writable | undefined;
  private followedAll = false;
  /** The follower's last batch, on its way: the next is received meanwhile. */
  private feeding: Promise<void> = Promise.resolve();

  constructor(init: IngestInit) {
    this.adopt = init.adopt;
    this.digest = init.digest;
    this.expectedSize = init.expectedSize;
    this.path = init.path;
    this.fh = init.fh;
    this.writer = init.writer;
    this.written = init.offset;
  }

  /** Bytes on disk and hashed so far: where a download resumes. */
  get offset(): number {
    return this.written;
  }

  /**
   * Gives `stream` every byte of the blob, in order, as each batch is on
   * disk, waiting for it to drain (so a slow reader slows the download).
   * Only an ingest that starts empty can: false otherwise. A follower that
   * is destroyed is dropped; `followed` then says it missed bytes, as it
   * does after a restart. Ending the stream is the caller's.
   */
  follow(stream: Writable): boolean {
    if (this.written > 0) return false;
    this.follower = stream;
    this.followedAll = true;
    return true;
  }

  /** True when the follower got every byte written, from the first. */
  get followed(): boolean {
    return this.followedAll;
  }

  private async feed(chunks: readonly Buffer[]): Promise<void> {
    const f = this.follower;
    if (!f) return;
    if (f.destroyed) {
      this.unfollow();
      return;
    }
    // One piece per batch, not the ~64 TLS-sized chunks it came in: a decompressor costs a round trip per write.
    if (!f.write(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks))) await drained(f);
  }

  private unfollow(): void {
    this.follower = undefined;
    this.followedAll = false;
  }

  async write(chunk: Buffer): Promise<void> {
    await this.writeMany([chunk], chunk.length);
  }

  /** Appends several chunks with one write call, without copying them together; `total` is their length. `chunks` must not change until this settles. */
  async writeMany(chunks: readonly Buffer[], total: number): Promise<void> {
    if (this.written + total > this.expectedSize) {
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: more than the ${this.expectedSize} bytes the manifest declares`,
      );
    }
    try {
      await this.writer.write(chunks, this.written);
    } catch (err) {
      throw this.diskError(err);
    }
    this.written += total;
    await this.feed(chunks);
  }

  /**
   * Up to `want` more bytes of `body`, written and hashed by the body
   * itself, never past the declared size. The bytes it wrote count even
   * when it stopped with a network error (returned, for the caller to
   * retry from there); a failed write to the file throws. The follower gets
   * each batch while the next is received.
   */
  async receive(body: BodySource, want: number): Promise<NativeReceive> {
    const take = Math.min(want, this.expectedSize - this.written);
    const copy = this.follower ? Buffer.allocUnsafe(take) : undefined;
    const r = await body.receive(this.writer, this.written, take, copy);
    this.written += r.bytes;
    if (r.error?.disk) throw this.diskError(r.error);
    if (copy && r.bytes > 0) {
      // A short batch (a slow link) is copied out, so the follower does not hold the whole step's buffer.
      const batch = r.bytes < take / 2 ? Buffer.from(copy.subarray(0, r.bytes)) : copy.subarray(0, r.bytes);
      const before = this.feeding;
      this.feeding = before.then(() => this.feed([batch]));
      await before;
    }
    return r;
  }

  /** A failed write as the FleetError that names the partial: E_NO_SPACE for a full disk or quota. */
  private diskError(err: unknown): FleetError {
    const code = errnoName(err) ?? "";
    const why = `blob ${this.digest}: cannot write ${this.path} at byte ${this.written}: ${(err as Error).message}`;
    if (code === "ENOSPC" || code === "EDQUOT")
      return new FleetError("E_NO_SPACE", `${why} (${code}); the partial is kept to resume`, { cause: err });
    return new FleetError("E_STORE_IO", `${why}${code ? ` (${code})` : ""}`, { cause: err });
  }

  /** Drops what was written, for a server that ignored the range and resent from the start. */
  async restart(): Promise<void> {
    await this.feeding;
    await this.fh.truncate(0);
    this.writer.reset();
    this.written = 0;
    this.unfollow(); // it has bytes of the first attempt that the second does not repeat
  }

  /** Verifies size and digest, then moves the blob into the store; a mismatch deletes the partial. */
  async commit(): Promise<void> {
    await this.feeding;
    if (this.written !== this.expectedSize) {
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: got ${this.written} bytes, the manifest declares ${this.expectedSize}`,
      );
    }
    const actual = `sha256:${this.writer.digest()}`;
    if (actual !== this.digest) {
      await this.close();
      unlinkSync(this.path);
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: its content hashes to ${actual}; the download was discarded`,
      );
    }
    await this.fh.sync();
    await this.close();
    await this.adopt(this.path, this.digest);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}
