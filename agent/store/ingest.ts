/**
 * One partial blob being written: every byte is hashed as it lands, and
 * `commit()` is the check that makes it a blob (size and sha256), handing
 * it to the content store only when both hold.
 */
import { createHash, type Hash } from "node:crypto";
import { unlinkSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { FleetError } from "../errors.js";

/** The chunks after the first `skip` bytes, for a short writev. */
function remainder(chunks: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) {
    if (skip >= c.length) skip -= c.length;
    else {
      out.push(skip ? c.subarray(skip) : c);
      skip = 0;
    }
  }
  return out;
}

interface IngestInit {
  /** Moves the verified file into the store as the blob `digest`. */
  adopt(path: string, digest: string): Promise<void>;
  digest: string;
  expectedSize: number;
  path: string;
  fh: FileHandle;
  hash: Hash;
  offset: number;
}

/** One partial blob being written. */
export class Ingest {
  readonly digest: string;
  readonly expectedSize: number;
  private readonly adopt: IngestInit["adopt"];
  private readonly path: string;
  private readonly fh: FileHandle;
  private hash: Hash;
  private written: number;
  private closed = false;

  constructor(init: IngestInit) {
    this.adopt = init.adopt;
    this.digest = init.digest;
    this.expectedSize = init.expectedSize;
    this.path = init.path;
    this.fh = init.fh;
    this.hash = init.hash;
    this.written = init.offset;
  }

  /** Bytes on disk and hashed so far: where a download resumes. */
  get offset(): number {
    return this.written;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.written + chunk.length > this.expectedSize) {
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: more than the ${this.expectedSize} bytes the manifest declares`,
      );
    }
    this.hash.update(chunk);
    let done = 0;
    while (done < chunk.length) {
      const { bytesWritten } = await this.fh.write(chunk, done, chunk.length - done, this.written + done);
      done += bytesWritten;
    }
    this.written += chunk.length;
  }

  /** Appends several chunks with one write call, without copying them together. */
  async writeMany(chunks: Buffer[], total: number): Promise<void> {
    if (this.written + total > this.expectedSize) {
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `blob ${this.digest}: more than the ${this.expectedSize} bytes the manifest declares`,
      );
    }
    for (const c of chunks) this.hash.update(c);
    let done = 0;
    while (done < total) {
      const { bytesWritten } = await this.fh.writev(done === 0 ? chunks : remainder(chunks, done), this.written + done);
      done += bytesWritten;
    }
    this.written += total;
  }

  /** Drops what was written, for a server that ignored the range and resent from the start. */
  async restart(): Promise<void> {
    await this.fh.truncate(0);
    this.hash = createHash("sha256");
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
    const actual = `sha256:${this.hash.digest("hex")}`;
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
