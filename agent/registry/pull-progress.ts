/**
 * Pull progress for people and for machines. On a terminal: a bar per layer
 * and a total, redrawn at most ten times a second. Elsewhere: the same
 * events, throttled to one progress event per layer per interval, for a log
 * or (later) the events topic.
 */
import { monotonicMs } from "../clock.js";
import type { PullEvent } from "./pull.js";

/** Passes every event but progress, which it passes at most once per `ms` per layer (and always at 100%). */
export function throttleProgress(onEvent: (e: PullEvent) => void, ms: number): (e: PullEvent) => void {
  const last = new Map<string, number>();
  return (e) => {
    if (e.type === "progress") {
      const now = monotonicMs();
      if (e.done < e.total && now - (last.get(e.layer) ?? Number.NEGATIVE_INFINITY) < ms) return;
      last.set(e.layer, now);
    }
    onEvent(e);
  };
}

const mib = (n: number) => (n / 1024 / 1024).toFixed(1);

/** Draws bars on a TTY stream (stderr). */
export class ProgressBars {
  private layers: { digest: string; size: number; done: number; state: string }[] = [];
  private drawn = 0;
  private lastDraw = 0;

  constructor(private readonly out: NodeJS.WriteStream) {}

  readonly handle = (e: PullEvent): void => {
    if (e.type === "resolved") {
      this.layers = e.layers.map((l) => ({
        digest: l.digest,
        size: l.size,
        done: l.present ? l.size : 0,
        state: l.present ? "present" : "waiting",
      }));
      this.out.write(`${e.ref} → ${e.digest.slice(0, 19)}\n`);
    } else if (e.type === "warning") {
      this.out.write(`fleetlet: warning: ${e.message}\n`);
      this.drawn = 0; // the bars are drawn again below the warning
    } else if (e.type === "progress" || e.type === "downloaded" || e.type === "unpacked") {
      const l = this.layers.find((x) => x.digest === e.layer);
      if (!l) return;
      if (e.type === "progress") {
        l.done = e.done;
        l.state = "downloading";
      } else l.state = e.type === "downloaded" ? "unpacking" : "done";
    }
    const now = monotonicMs();
    if (e.type === "progress" && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    this.draw();
    if (e.type === "done")
      this.out.write(`pulled ${e.ref}: ${mib(e.fetchedBytes)} MiB fetched in ${(e.ms / 1000).toFixed(1)} s\n`);
  };

  private draw(): void {
    if (this.drawn) this.out.write(`\x1b[${this.drawn}A`);
    const width = 30;
    const lines = this.layers.map((l) => {
      const frac = l.size ? Math.min(1, l.done / l.size) : 1;
      const bar = "#".repeat(Math.round(frac * width)).padEnd(width, ".");
      return `${l.digest.slice(7, 19)} [${bar}] ${mib(l.done).padStart(7)}/${mib(l.size)} MiB ${l.state}`;
    });
    const total = this.layers.reduce((n, l) => n + l.size, 0);
    const done = this.layers.reduce((n, l) => n + l.done, 0);
    lines.push(`total        ${mib(done).padStart(7)}/${mib(total)} MiB`);
    this.out.write(`${lines.map((l) => `\x1b[2K${l}`).join("\n")}\n`);
    this.drawn = lines.length;
  }
}
