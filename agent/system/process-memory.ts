/**
 * The agent process's memory, for a daemon that idles for days on a small
 * device between short bursts of work.
 *
 * Node flags: Node's defaults suit a server that is busy all the time. When
 * `fleetlet agent` was started without the flags below (from a shell, or by
 * systemd), it re-executes itself with them before anything else runs: same
 * pid, same arguments, same environment. A flag already given on the command
 * line or in NODE_OPTIONS is left as given, so an operator can override any
 * of them (`node --max-semi-space-size=16 fleetlet.js agent`).
 *
 * Reclaiming: V8 shrinks its heap only after certain full collections, and a
 * burst of applies often ends without one: the heap then keeps what the burst
 * promoted, and the malloc heap its freed pages, however long the device then
 * idles. So, a few seconds after the last sign of work, the native core runs
 * V8's low-memory collection and hands glibc's free pages back to the kernel.
 */
import type { NativeCore } from "./native.js";

/**
 * Measured with `npm run bench -- agent`:
 * - --max-semi-space-size=1 (MiB): the young generation no longer grows to
 *   16 MiB semi-spaces under an apply's allocation rate; RSS at the peak of a
 *   burst of applies is some 6 MiB lower (25 MiB before reclaiming existed),
 *   for no measurable CPU.
 * - --v8-pool-size=1: one V8 worker thread instead of four, so fewer stacks
 *   and malloc arenas, and less CPU spent in parallel GC on a 1-2 core device.
 * - --lite-mode: V8 interprets only (no Sparkplug, Maglev or TurboFan code, and
 *   none of their code touched in node's binary), allocates feedback lazily and
 *   optimizes for size. Idle with 10 services, 8 MiB less resident (71.4 →
 *   63.1 MiB after work, 70.9 → 62.7 after a restart, bundled agent, Node 24),
 *   for 38% more CPU per apply (21.8 → 30.0 ms for a 10-service document with
 *   one service changed). It also leaves out WebAssembly (and so `fetch`,
 *   whose HTTP parser is WebAssembly): the daemon uses neither. Pull workers
 *   (cli/pull-process.ts), short-lived and busy, run without it (nor the
 *   early bytecode flushing below): WORKER_DROPS.
 * - --bytecode-old-age=2 (V8's default 6): a function's bytecode is dropped
 *   once it has not run through two full collections instead of six, and
 *   compiled again if it runs again. The reclaim's low-memory collection
 *   (below) runs several, so what only start-up and the last burst ran goes:
 *   idle with 10 services 0.6 to 1.1 MiB less resident (59.6 → 59.0 MiB after
 *   work, 59.6 → 58.7 after a restart, bundled agent; 60.0/59.8 → 59.0/58.7
 *   in a run without zod's jitless). Publish → converged with
 *   applies 10 s apart, each after a reclaim: 45.0 → 45.7 ms p50 for one
 *   service, 201 → 191 ms for 20 (noise); agent CPU per apply 28.4 → 27.8 ms.
 * Left out: --no-opt saves 5 MiB for 17% more CPU (lite-mode does more for
 * more); --optimize-for-size, --no-maglev, MALLOC_ARENA_MAX=2 and
 * UV_THREADPOOL_SIZE=1 change nothing measurable here.
 */
export const AGENT_NODE_FLAGS: readonly string[] = [
  "--max-semi-space-size=1",
  "--v8-pool-size=1",
  "--lite-mode",
  "--bytecode-old-age=2",
];
/** The daemon's flags a pull worker goes without: they save memory that a short-lived process gives back anyway. */
export const WORKER_DROPS: readonly string[] = ["--lite-mode", "--bytecode-old-age"];

/**
 * glibc's malloc for one-shot commands, which deploy/launcher.sh starts with
 * these tunables. A pull or an unpack goes through a fresh buffer per batch:
 * the body's copy for the unpack, the decompressor's output, a layer's reads
 * from disk. Each 4 KiB page of them is a page fault, which costs 10 µs in
 * the VM the benchmarks ran in.
 * - `hugetlb=1`: the heap in 2 MiB transparent huge pages (glibc madvises
 *   it, where the kernel's THP mode is "madvise"). Measured with
 *   `npm run bench -- pull --bundle`: a 50 MiB layer's unpack 15,800 → 4,600
 *   faults, 0.38 → 0.23 s; a 200 MiB pull and unpack 34,600 → 15,500 faults,
 *   1.35 → 1.20 s wall, 1.87 → 1.56 s CPU.
 * - `mmap_threshold=4194304`: blocks up to 4 MiB (the decompressor's 256 KiB
 *   outputs, the 1 MiB reads of a stored blob) come from that heap. Left to
 *   itself, glibc maps each block over 128 KiB on its own (4 KiB pages) until
 *   one is freed, which for a Buffer is the next garbage collection. Measured
 *   alternating with and without it, 11 rounds each: the unpack of a 50 MiB
 *   layer 124 → 108 ms, 4,640 → 4,070 faults.
 * Not for the daemon (with hugetlb, idle with 10 services it held 3.8 MiB
 * more), which re-executes itself without them, nor for its pull workers,
 * which it forks with its own environment: with hugetlb, 20 services whose
 * images were cached took 620 and 652 ms from publish to converged, against
 * 446 without (`npm run bench -- agent --quick`), each pull's short work
 * paying for the huge pages it touched.
 * Only where a huge page is 2 MiB: with 64 KiB base pages it is 512 MiB
 * (the launcher reads hpage_pmd_size).
 */
export const BULK_MALLOC_TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4194304";
/**
 * Set by the launcher beside the tunables, so that the daemon knows it was
 * started with them whatever glibc makes of the variable: glibc 2.36
 * rewrites the process's environment block without them (other tunables
 * stay; that is what /proc/<pid>/environ shows), while Node's process.env
 * still has them.
 */
export const BULK_MALLOC_MARK = "FLEETLET_BULK_MALLOC";

const BULK = new Set(BULK_MALLOC_TUNABLES.split(":"));

/** GLIBC_TUNABLES (colon-separated) without the BULK_MALLOC_TUNABLES; undefined when nothing is left. */
export function tunablesWithoutBulk(value: string | undefined): string | undefined {
  const rest = (value ?? "").split(":").filter((t) => t !== "" && !BULK.has(t));
  return rest.length ? rest.join(":") : undefined;
}

/** Quiet this long (no apply step, no event) before reclaiming. */
export const RECLAIM_AFTER_MS = 5_000;

/** A flag's name, as V8 reads it: `--max_semi_space_size=4` is `--max-semi-space-size`. */
const flagName = (flag: string) => flag.split("=")[0]!.replaceAll("_", "-");
/** Set for the re-executed image only, so that it can never re-execute again. */
const REEXECUTED = "FLEETLET_REEXECUTED";

/** A pull worker's Node flags: the daemon's (`execArgv`) but WORKER_DROPS. */
export function workerNodeFlags(execArgv: readonly string[]): string[] {
  return execArgv.filter((f) => !WORKER_DROPS.includes(flagName(f)));
}

/**
 * Re-executes this process with the agent's Node flags if any is missing, or
 * without the BULK_MALLOC_TUNABLES if it was started with them (the launcher
 * sets them for every command); returns, having done nothing, when neither is so.
 */
export function execWithAgentFlags(native: Pick<NativeCore, "execve">): void {
  if (process.env[REEXECUTED] !== undefined) {
    delete process.env[REEXECUTED]; // not for the containers' shims
    return;
  }
  const given = new Set([...process.execArgv, ...(process.env.NODE_OPTIONS ?? "").split(/\s+/)].map(flagName));
  const missing = AGENT_NODE_FLAGS.filter((f) => !given.has(flagName(f)));
  if (missing.length === 0 && process.env[BULK_MALLOC_MARK] === undefined) return;
  const vars = {
    ...process.env,
    GLIBC_TUNABLES: tunablesWithoutBulk(process.env.GLIBC_TUNABLES),
    [BULK_MALLOC_MARK]: undefined,
    [REEXECUTED]: "1",
  };
  const env = Object.entries(vars).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
  native.execve(process.execPath, [process.execPath, ...process.execArgv, ...missing, ...process.argv.slice(1)], env);
}

/** Runs the native core's reclaim once the agent has been quiet for `afterMs`. */
export class MemoryReclaimer {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly native: Pick<NativeCore, "reclaimMemory">,
    private readonly afterMs = RECLAIM_AFTER_MS,
  ) {}

  /** Work happened: reclaim once it has been quiet for `afterMs`. */
  poke(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.native.reclaimMemory(), this.afterMs);
    this.timer.unref(); // never what keeps the process alive
  }

  stop(): void {
    clearTimeout(this.timer);
  }
}
