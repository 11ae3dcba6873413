/**
 * A monotonic clock in milliseconds, for durations and rates.
 *
 * It stands in for `performance.now()`: the first read of the `performance`
 * global makes Node load perf_hooks and its timing modules, 1.4 MiB resident
 * in an idle daemon that only ever wanted a clock (measured in a bare node
 * under the agent's flags). biome.json denies the global in agent/ and schemas/.
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}
