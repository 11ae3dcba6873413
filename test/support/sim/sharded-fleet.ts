/**
 * A SIMULATED fleet spread over child processes, for fleets one Node process
 * cannot carry: each child runs simulated-shard.js, a SimulatedFleet of its
 * share of the devices, and answers over the IPC channel.
 */
import { type ChildProcess, fork } from "node:child_process";
import { FleetError } from "../../../agent/errors.js";
import type { SimulatedFleetOptions, SimulatedFleetStats } from "./simulated-fleet.js";

/** What the parent and a shard say to each other over the IPC channel. */
export type ShardRequest =
  | { type: "start"; options: SimulatedFleetOptions }
  | { type: "stats"; id: number }
  | { type: "stop" };
export type ShardReply =
  | { type: "progress"; online: number }
  | { type: "started" }
  | { type: "stats"; id: number; stats: SimulatedFleetStats }
  | { type: "stopped" }
  | { type: "error"; message: string };

/**
 * A simulated fleet spread over child processes (simulated-shard.js), `shards`
 * of them, the devices dealt out in turn; `connectConcurrency` is for all of
 * them together, shared out between the shards.
 */
export class ShardedFleet {
  private readonly online: number[];
  private requests = 0;
  private readonly pending = new Map<number, (s: SimulatedFleetStats) => void>();

  private constructor(readonly children: ChildProcess[]) {
    this.online = children.map(() => 0);
  }

  static async start(
    opts: SimulatedFleetOptions & { shards: number; execArgv?: string[] },
    onProgress?: (online: number) => void,
  ): Promise<ShardedFleet> {
    const entry = new URL("./simulated-shard.js", import.meta.url);
    const { shards, execArgv, ...fleetOpts } = opts;
    const children = Array.from({ length: shards }, () =>
      fork(entry, [], { stdio: ["ignore", "inherit", "inherit", "ipc"], execArgv: execArgv ?? [] }),
    );
    const fleet = new ShardedFleet(children);
    const started = children.map(
      (child, i) =>
        new Promise<void>((resolve, reject) => {
          child.on("message", (m: ShardReply) => {
            if (m.type === "progress") {
              fleet.online[i] = m.online;
              onProgress?.(fleet.online.reduce((a, b) => a + b, 0));
            } else if (m.type === "started") resolve();
            else if (m.type === "stats") fleet.pending.get(m.id)?.(m.stats);
            else if (m.type === "error")
              reject(new FleetError("E_RUNTIME", `simulation shard ${i + 1}/${shards}: ${m.message}`));
          });
          child.once("exit", (code, sig) =>
            reject(new FleetError("E_RUNTIME", `simulation shard ${i + 1}/${shards} exited (${code ?? sig})`)),
          );
          const deviceIds = fleetOpts.deviceIds.filter((_, j) => j % shards === i);
          const connectConcurrency = Math.max(1, Math.floor((fleetOpts.connectConcurrency ?? 50) / shards));
          child.send({
            type: "start",
            options: { ...fleetOpts, deviceIds, connectConcurrency },
          } satisfies ShardRequest);
        }),
    );
    try {
      await Promise.all(started);
    } catch (err) {
      for (const c of children) c.kill("SIGKILL");
      throw err;
    }
    return fleet;
  }

  /** Each shard's figures, in shard order. */
  stats(): Promise<SimulatedFleetStats[]> {
    return Promise.all(
      this.children.map(
        (child) =>
          new Promise<SimulatedFleetStats>((resolve) => {
            const id = ++this.requests;
            this.pending.set(id, (s) => {
              this.pending.delete(id);
              resolve(s);
            });
            child.send({ type: "stats", id } satisfies ShardRequest);
          }),
      ),
    );
  }

  /** Stops every device (their sessions say goodbye), then the shards exit; SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 30_000): Promise<void> {
    await Promise.all(
      this.children.map((child) => {
        if (child.exitCode !== null || child.signalCode !== null) return undefined;
        const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        child.send({ type: "stop" } satisfies ShardRequest);
        return exited.finally(() => clearTimeout(timer));
      }),
    );
  }
}
