/**
 * An exclusive lock across processes: flock(2) on a lock file, polled
 * without blocking the event loop. The kernel drops it with the holder's
 * last descriptor, so nobody ever waits on a dead holder.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { NativeCore } from "./native.js";
import { closeFd, openFd } from "./promised-fs.js";

export class FlockLock {
  constructor(
    private readonly path: string,
    private readonly native: Pick<NativeCore, "tryLock">,
  ) {}

  /** Waits for the lock; resolves with the function that releases it. */
  async acquire(): Promise<() => Promise<void>> {
    const fd = await openFd(this.path, "a", 0o600);
    try {
      for (let wait = 1; !this.native.tryLock(fd, true); wait = Math.min(wait * 2, 20)) await sleep(wait);
    } catch (err) {
      await closeFd(fd);
      throw err;
    }
    return () => closeFd(fd); // closing the last descriptor drops the lock
  }
}
