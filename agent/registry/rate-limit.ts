/**
 * A token bucket shared by every download of a pull, so `--max-rate` caps
 * their total bandwidth. A rate of 0 means no cap.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { monotonicMs } from "../clock.js";

export class RateLimiter {
  private tokens: number;
  private last = monotonicMs();

  constructor(private readonly bytesPerSec: number) {
    this.tokens = Math.min(bytesPerSec, 64 * 1024);
  }

  get limited(): boolean {
    return this.bytesPerSec > 0;
  }

  get rate(): number {
    return this.bytesPerSec;
  }

  /** Waits until `n` bytes may pass. */
  async take(n: number, signal?: AbortSignal): Promise<void> {
    if (this.bytesPerSec <= 0) return;
    const now = monotonicMs();
    // At most a quarter second of burst, so the cap holds over short spans too.
    this.tokens = Math.min(this.bytesPerSec / 4, this.tokens + ((now - this.last) / 1000) * this.bytesPerSec);
    this.last = now;
    this.tokens -= n;
    if (this.tokens < 0) await sleep((-this.tokens / this.bytesPerSec) * 1000, undefined, { signal });
  }
}
