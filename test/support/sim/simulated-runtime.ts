/**
 * SIMULATED container driver: it runs NO containers and touches no kernel
 * state. It exists for fleet-scale simulation and fast agent tests only (simulated-fleet.ts,
 * `npm run bench -- fleet`), where thousands of real agents share one process
 * and each needs a runtime. Containers are in-memory records; a started one
 * "runs" until it is stopped, killed or deleted. Specs are validated with the
 * real schema (schemas/container), so the reconciler is held to the same contract.
 *
 * Simulated failures, by command convention (the container's full argv, after
 * the image's entrypoint):
 *   ["exit", "N"]        exits with status N, EXIT_AFTER_MS after its start;
 *   ["exit", "N", "MS"]  the same, MS milliseconds after its start.
 * An exec (a healthcheck) of ["exit", "N"] returns N at once; any other exec returns 0.
 * A stop or kill ends the process at once with 128 + the signal's number.
 */

import { FleetError } from "../../../agent/errors.js";
import type { ContainerDriver } from "../../../agent/reconcile/container-driver.js";
import { signalNumber } from "../../../agent/runtime/signals.js";
import {
  type CgroupMode,
  type ContainerInfo,
  type ContainerSpecInput,
  type ContainerStats,
  containerSpec,
  type ExitRecord,
} from "../../../schemas/container.js";
import { formatIssues } from "../../../schemas/format-issues.js";

/** How long after its start a simulated ["exit", "N"] container exits. */
export const EXIT_AFTER_MS = 50;

interface SimContainer {
  info: ContainerInfo;
  waiters: Set<(exit: ExitRecord) => void>;
  timer?: NodeJS.Timeout;
}

/** Parses the ["exit", "N", "MS"?] convention; undefined for a command that runs until stopped. */
export function simulatedExit(command: string[]): { code: number; afterMs: number } | undefined {
  if (command[0] !== "exit") return undefined;
  const code = Number(command[1] ?? 0);
  const afterMs = command[2] === undefined ? EXIT_AFTER_MS : Number(command[2]);
  if (!Number.isInteger(code) || code < 0 || code > 255 || !Number.isFinite(afterMs) || afterMs < 0) {
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `simulated command ${JSON.stringify(command)}: expected ["exit", N (0-255), MS?]`,
    );
  }
  return { code, afterMs };
}

let nextPid = 100_000;

export class SimulatedRuntime implements ContainerDriver {
  readonly cgroups: { readonly mode: CgroupMode };
  private readonly containers = new Map<string, SimContainer>();
  private nextId = 0;

  constructor(opts: { cgroupMode?: CgroupMode } = {}) {
    this.cgroups = { mode: opts.cgroupMode ?? "v2" };
  }

  private get(id: string): SimContainer {
    const c = this.containers.get(id);
    if (!c) throw new FleetError("E_NOT_FOUND", `no such container: ${id}`);
    return c;
  }

  create(input: ContainerSpecInput): ContainerInfo {
    const parsed = containerSpec.safeParse(input);
    if (!parsed.success) throw new FleetError("E_INVALID_ARGUMENT", formatIssues(parsed.error), { exitCode: 125 });
    const spec = parsed.data;
    simulatedExit(spec.command); // refuses a malformed convention now, not at start
    const id = spec.name ?? `sim${(this.nextId++).toString(16).padStart(12, "0")}`;
    if (this.containers.has(id))
      throw new FleetError("E_CONFLICT", `a container named ${id} already exists`, { exitCode: 125 });
    const info: ContainerInfo = { id, status: "created", createdAt: new Date().toISOString(), spec };
    this.containers.set(id, { info, waiters: new Set() });
    return { ...info };
  }

  async start(id: string): Promise<ContainerInfo> {
    const c = this.get(id);
    if (c.info.status !== "created")
      throw new FleetError("E_CONFLICT", `container ${id} has already been started`, { exitCode: 125 });
    c.info.status = "running";
    c.info.startedAt = new Date().toISOString();
    c.info.pid = nextPid++;
    const exit = simulatedExit(c.info.spec.command);
    if (exit) c.timer = setTimeout(() => this.exit(c, exit.code, 0), exit.afterMs);
    return { ...c.info };
  }

  private exit(c: SimContainer, exitCode: number, signal: number): ExitRecord {
    clearTimeout(c.timer);
    const exit: ExitRecord = {
      pid: c.info.pid!,
      exitCode,
      signal,
      oomKilled: false,
      startedAt: c.info.startedAt!,
      finishedAt: new Date().toISOString(),
    };
    c.info.status = "exited";
    c.info.exit = exit;
    for (const w of c.waiters) w(exit);
    c.waiters.clear();
    return exit;
  }

  /** Ends the simulated process with 128 + the signal's number; false when it has already exited. */
  kill(id: string, signal: string | number = "SIGKILL"): boolean {
    const c = this.get(id);
    if (c.info.status === "created") throw new FleetError("E_CONFLICT", `container ${id} is not running`);
    if (c.info.status === "exited") return false;
    const n = signalNumber(signal);
    this.exit(c, 128 + n, n);
    return true;
  }

  wait(id: string, signal?: AbortSignal): Promise<ExitRecord> {
    const c = this.get(id);
    if (c.info.exit) return Promise.resolve(c.info.exit);
    if (c.info.status === "created")
      return Promise.reject(new FleetError("E_CONFLICT", `container ${id} has not been started`));
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        c.waiters.delete(done);
        reject(signal?.reason ?? new Error("aborted"));
      };
      const done = (exit: ExitRecord) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(exit);
      };
      if (signal?.aborted) return onAbort();
      c.waiters.add(done);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  async exec(
    id: string,
    command: string[],
    opts: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<{ exitCode: number; output: string }> {
    opts.signal?.throwIfAborted();
    if (this.get(id).info.status !== "running") throw new FleetError("E_CONFLICT", `container ${id} is not running`);
    return { exitCode: simulatedExit(command)?.code ?? 0, output: "" };
  }

  async stop(id: string, opts: { timeoutMs?: number; signal?: string } = {}): Promise<ExitRecord> {
    const c = this.get(id);
    if (c.info.exit) return c.info.exit;
    if (c.info.status === "created") throw new FleetError("E_CONFLICT", `container ${id} is not running`);
    this.kill(id, opts.signal ?? c.info.spec.stopSignal);
    return c.info.exit!;
  }

  async delete(id: string, opts: { force?: boolean } = {}): Promise<void> {
    const c = this.get(id);
    if (c.info.status === "running") {
      if (!opts.force)
        throw new FleetError("E_CONTAINER_RUNNING", `container ${id} is running: stop it first or force the removal`);
      this.kill(id, "SIGKILL");
    }
    clearTimeout(c.timer);
    this.containers.delete(id);
  }

  inspect(id: string): ContainerInfo {
    return { ...this.get(id).info };
  }

  list(): ContainerInfo[] {
    return [...this.containers.keys()].sort().map((id) => this.inspect(id));
  }

  /** Nothing runs, so nothing is used: zeros, and the one simulated process. */
  stats(id: string): ContainerStats {
    return { memoryBytes: 0, cpuNanos: 0, pids: this.get(id).info.status === "running" ? 1 : 0 };
  }

  logs(id: string, _opts: { tail?: number } = {}): string {
    this.get(id);
    return "";
  }
}
