/**
 * An exclusive lock across processes: flock(2) on a lock file, polled
 * without blocking the event loop. The kernel drops it with the holder's
 * last descriptor, so nobody ever waits on a dead holder.
 */
import { type FileHandle, open } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { NativeCore } from "./native.js";

export class FlockLock {
  constructor(
    private readonly path: string,
    private readonly native: Pick<NativeCore, "tryLock">,
  ) {}

  /** Waits for the lock; resolves with the function that releases it. */
  async acquire(): Promise<() => Promise<void>> {
    const fh: FileHandle = await open(this.path, "a", 0o600);
    try {
      for (let wait = 1; !this.native.tryLock(fh.fd, true); wait = Math.min(wait * 2, 20)) await sleep(wait);
    } catch (err) {
      await fh.close();
      throw err;
    }
    return () => fh.close(); // closing the last descriptor drops the lock
  }
}
