/** Restart decisions and their backoff: pure, so they are tested without waiting. */
export type RestartPolicy = "always" | "on-failure" | "never";

export const BACKOFF_START_MS = 1000;
export const BACKOFF_MAX_MS = 5 * 60 * 1000;
/** Running this long without trouble clears the backoff. */
export const BACKOFF_RESET_MS = 10 * 60 * 1000;

export function shouldRestart(policy: RestartPolicy, exitCode: number): boolean {
  return policy === "always" || (policy === "on-failure" && exitCode !== 0);
}

/** Delay before restart number `attempt` (1-based): 1 s, 2 s, 4 s, … capped at 5 minutes. */
export function restartDelay(attempt: number): number {
  return Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** Math.max(0, attempt - 1));
}
