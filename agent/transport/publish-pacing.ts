/**
 * How the session's publishes are paced so they cannot flood the broker or
 * the agent's memory: the reported doc coalesced to at most one publish per
 * interval (the latest doc always going out), and events limited to a rate,
 * with progress events dropped beyond it and lifecycle events held, within
 * a bound, while offline.
 */

const OFFLINE_EVENTS_MAX = 100;

/** Events whose type ends in "progress" are the ones the rate limit may drop; the rest are lifecycle events. */
export function isProgressEvent(type: string): boolean {
  return /progress$/i.test(type);
}

class TokenBucket {
  private tokens: number;
  private last = Date.now();
  private readonly perSecond: number;

  constructor(perSecond: number) {
    this.perSecond = perSecond;
    this.tokens = perSecond;
  }

  take(): boolean {
    const now = Date.now();
    this.tokens = Math.min(this.perSecond, this.tokens + ((now - this.last) / 1000) * this.perSecond);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

export type EventDoc = { type: string; [k: string]: unknown };

export class EventPacer {
  private readonly bucket: TokenBucket;
  private offline: object[] = [];

  constructor(perSecond: number) {
    this.bucket = new TokenBucket(perSecond);
  }

  /** The event to publish now (with a `ts` added when missing), or undefined when it is held for the broker or dropped. */
  admit(ev: EventDoc, connected: boolean): object | undefined {
    const doc = { ...ev, ts: ev.ts ?? new Date().toISOString() };
    const droppable = isProgressEvent(ev.type);
    if (!connected) {
      // Lifecycle events wait for the broker, within a bound: the device may be offline for days.
      if (!droppable) this.offline = [...this.offline.slice(1 - OFFLINE_EVENTS_MAX), doc];
      return undefined;
    }
    if (!this.bucket.take() && droppable) return undefined;
    return doc;
  }

  /** The events held while offline, oldest first; they are no longer held. */
  takeHeld(): object[] {
    return this.offline.splice(0);
  }
}

export interface ReportedPacerOptions {
  minIntervalMs: number;
  /** Whether a publish can go out now (the session is connected). */
  ready: () => boolean;
  publish: (doc: object) => void;
  /** Runs the timer's work: nothing may throw out of a timer. */
  guard: (work: () => void) => void;
}

export class ReportedPacer {
  private pending: object | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastAt = 0;

  constructor(private readonly opts: ReportedPacerOptions) {}

  /** The doc offered last and not yet published. */
  get unsent(): object | undefined {
    return this.pending;
  }

  /** Takes the latest doc; a `settled` one goes out without waiting for the interval. */
  offer(doc: object, settled: boolean): void {
    this.pending = doc;
    if (settled && this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.lastAt = 0;
    } else if (settled) this.lastAt = 0;
    this.flush();
  }

  /** Publishes the pending doc now, or once the interval since the last publish has passed. */
  flush(): void {
    if (this.pending === undefined || !this.opts.ready() || this.timer) return;
    const wait = this.lastAt + this.opts.minIntervalMs - Date.now();
    if (wait > 0) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.opts.guard(() => this.flush());
      }, wait);
      return;
    }
    const doc = this.pending;
    this.pending = undefined;
    this.lastAt = Date.now();
    this.opts.publish(doc);
  }

  cancel(): void {
    clearTimeout(this.timer);
  }
}
