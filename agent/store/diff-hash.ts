/**
 * A layer's diff id as its tar passes by: the sha256 of every byte,
 * computed on a worker thread (the native core's BlobWriter over no file),
 * so that hashing does not hold up the event loop that decompresses and
 * writes the layer. Bytes are hashed in the order given; a stream that runs
 * more than MAX_AHEAD_BYTES ahead of the hash waits for it.
 */
import type { NativeBlobWriter, NativeCore } from "../system/native.js";

const MAX_AHEAD_BYTES = 8 << 20;

export class DiffHash {
  private readonly hasher: NativeBlobWriter;
  private queue: Promise<void> = Promise.resolve();
  private ahead = 0;

  constructor(native: Pick<NativeCore, "BlobWriter">) {
    this.hasher = new native.BlobWriter(-1);
  }

  /** Queues `chunk`: undefined when the caller may go on, else a promise of the hash catching up. */
  update(chunk: Buffer): Promise<void> | undefined {
    this.ahead += chunk.length;
    this.queue = this.queue
      .then(() => this.hasher.write([chunk], 0))
      .then(() => {
        this.ahead -= chunk.length;
      });
    return this.ahead > MAX_AHEAD_BYTES ? this.queue : undefined;
  }

  /** `sha256:<hex>` of everything queued, once it is hashed. */
  async digest(): Promise<string> {
    await this.queue;
    return `sha256:${this.hasher.digest()}`;
  }

  /** Once the queued work stopped, for an unpack that failed (which reports its own error). */
  settle(): Promise<void> {
    return this.queue.catch(() => undefined); // the unpack's error is the one that matters
  }
}
