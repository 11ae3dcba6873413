/** Percentiles and the printing shared by the benchmarks. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export interface Summary {
  name: string;
  runs: number;
  p50: number;
  p99: number;
  mean: number;
}

export function summarize(name: string, samplesMs: number[]): Summary {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const mean = sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length);
  return { name, runs: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99), mean };
}

export function printSummaries(title: string, rows: Summary[], unit = "ms"): void {
  console.log(`\n${title}`);
  console.log(
    `${"".padEnd(34)}${"runs".padStart(6)}${`p50 ${unit}`.padStart(11)}${`p99 ${unit}`.padStart(11)}${`mean ${unit}`.padStart(11)}`,
  );
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(34)}${String(r.runs).padStart(6)}${r.p50.toFixed(2).padStart(11)}${r.p99.toFixed(2).padStart(11)}${r.mean.toFixed(2).padStart(11)}`,
    );
  }
}
