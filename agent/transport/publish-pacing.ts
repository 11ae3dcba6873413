/**
 * How the session's publishes are paced so they cannot flood the broker or
 * the agent's memory: the reported doc coalesced to at most one publish per
 * interval (the latest doc always going out) and only when it changed, and
 * events limited to a rate,
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
  /** A doc whose key equals the last published doc's is not published (unless forced); default: the whole doc. */
  changeKey?: (doc: object) => string;
}

/** A reported doc, or what builds it: a doc built only when it is due saves building one at every change. */
export type DocSource = object | (() => object);

const built = (source: DocSource): object => (typeof source === "function" ? source() : source);

/**
 * The reported doc's publishes: a change waits minIntervalMs for the changes
 * that follow it (a restart is several: stopped, starting, running) and the
 * latest doc goes out once; a settled doc (an apply's outcome) goes out at
 * once. A doc that changes nothing since the one published last is dropped.
 * A change offered as a builder is built once, when it is due.
 */
export class ReportedPacer {
  private pending: { source: DocSource; force: boolean } | undefined;
  private sent: { doc: object; key: string } | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ReportedPacerOptions) {}

  /** The doc offered last and not yet published, when it changes something (or was forced). */
  get unsent(): object | undefined {
    if (this.pending === undefined) return undefined;
    const doc = built(this.pending.source);
    return this.pending.force || this.key(doc) !== this.sent?.key ? doc : undefined;
  }

  /** Takes the latest doc: published at once when `settled` or `force`d, else when the interval is over; dropped then if it changes nothing (unless `force`d). */
  offer(source: DocSource, settled: boolean, force = false): void {
    this.pending = { source, force: force || (this.pending?.force ?? false) };
    if (settled || force) this.flush();
    else this.timer ??= setTimeout(() => this.opts.guard(() => this.flush()), this.opts.minIntervalMs);
  }

  /** Publishes the pending doc now, when connected (or later, when the session calls again on connecting). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending === undefined || !this.opts.ready()) return;
    const { source, force } = this.pending;
    this.pending = undefined;
    const doc = built(source);
    const key = this.key(doc);
    if (!force && key === this.sent?.key) return;
    this.sent = { doc, key };
    this.opts.publish(doc);
  }

  /** Publishes the doc published last once more (the broker lost its retained copy), unless a newer one waits. */
  republish(): void {
    if (this.pending === undefined && this.sent) this.pending = { source: this.sent.doc, force: true };
    this.flush();
  }

  cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private key(doc: object): string {
    return (this.opts.changeKey ?? JSON.stringify)(doc);
  }
}
