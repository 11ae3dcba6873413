/** Adds one plain closing line, "tests: N passed, N failed", that any CI log reader understands. */
import type { Reporter, RunnerTask, RunnerTestFile } from "vitest";

function count(tasks: RunnerTask[], totals: { passed: number; failed: number; skipped: number }): void {
  for (const t of tasks) {
    if (t.type === "suite") count(t.tasks, totals);
    else if (t.result?.state === "pass") totals.passed++;
    else if (t.result?.state === "fail") totals.failed++;
    else totals.skipped++;
  }
}

export default class SummaryReporter implements Reporter {
  onFinished(files: RunnerTestFile[] = [], errors: unknown[] = []): void {
    const totals = { passed: 0, failed: 0, skipped: 0 };
    count(files, totals);
    const failed = totals.failed + errors.length;
    process.stdout.write(
      `\ntests: ${totals.passed} passed, ${failed} failed${totals.skipped ? `, ${totals.skipped} skipped` : ""}\n`,
    );
  }
}
