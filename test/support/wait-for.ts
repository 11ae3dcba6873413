/**
 * The one polling wait of the tests and the demos: asks `probe` again and
 * again until it returns a truthy value, which it resolves with, or until the
 * time is up. Then it throws an error that names what was awaited and shows
 * what the probe last returned or threw, so a failed wait says why.
 */
import { setTimeout as delay } from "node:timers/promises";
import { inspect } from "node:util";

export interface WaitForOptions {
  /** How long to keep asking; default 10 s. */
  timeoutMs?: number;
  /** The pause between two asks; default 50 ms. */
  intervalMs?: number;
  /** More for the timeout error, read when it happens (e.g. `last report: …`). */
  context?: () => string;
}

export type Truthy<T> = Exclude<T, undefined | null | false | 0 | "">;

const show = (value: unknown) => inspect(value, { depth: 4, breakLength: Number.POSITIVE_INFINITY });

export async function waitFor<T>(
  what: string,
  probe: () => T | Promise<T>,
  opts: WaitForOptions = {},
): Promise<Truthy<T>> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  let last: { value: unknown } | { error: unknown };
  for (;;) {
    try {
      const value = await probe();
      if (value) return value as Truthy<T>;
      last = { value };
    } catch (error) {
      // What the probe looks at may not be there yet (a file, a connection): ask again, and show the error if time runs out.
      last = { error };
    }
    const left = deadline - Date.now();
    if (left <= 0) {
      const lastSeen =
        "error" in last
          ? `last error: ${last.error instanceof Error ? last.error.message : show(last.error)}`
          : `last value: ${show(last.value)}`;
      const context = opts.context ? `; ${opts.context()}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; ${lastSeen}${context}`, {
        cause: "error" in last ? last.error : undefined,
      });
    }
    await delay(Math.min(intervalMs, left));
  }
}
