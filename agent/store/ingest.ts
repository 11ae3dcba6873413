/**
 * One partial blob being written: every byte is hashed as it lands (both on
 * a worker thread, by the native core's BlobWriter), and `commit()` is the
 * check that makes it a blob (size and sha256), handing it to the content
 * store only when both hold.
 */
import { unlinkSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { FleetError } from "../errors.js";
import type { NativeBlobWriter } from "../system/native.js";

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

  async write(chunk: Buffer): Promise<void> {
    await this.writeMany([chunk], chunk.length);
  }

  /** Appends several chunks with one write call, without copying them together; `total` is their length. */
  async writeMany(chunks: Buffer[], total: number): Promise<void> {
    if (this.written + total > this.expectedSize) {
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: more than the ${this.expectedSize} bytes the manifest declares`,
      );
    }
    await this.writer.write(chunks, this.written);
    this.written += total;
  }

  /** Drops what was written, for a server that ignored the range and resent from the start. */
  async restart(): Promise<void> {
    await this.fh.truncate(0);
    this.writer.reset();
    this.written = 0;
  }

  /** Verifies size and digest, then moves the blob into the store; a mismatch deletes the partial. */
  async commit(): Promise<void> {
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
