/**
 * Entry of one SIMULATED fleet shard, forked by ShardedFleet.start
 * (sharded-fleet.ts): runs its share of the simulated devices and answers
 * the parent over the IPC channel. Not a command of its own.
 */
import type { ShardReply, ShardRequest } from "./sharded-fleet.js";
import { SimulatedFleet } from "./simulated-fleet.js";

const reply = (m: ShardReply) => process.send?.(m);
let fleet: SimulatedFleet | undefined;

if (!process.send) {
  process.stderr.write("simulated-shard: run by ShardedFleet.start (child_process.fork), not by hand\n");
  process.exit(2);
}

process.on("message", (m: ShardRequest) => {
  if (m.type === "start") {
    SimulatedFleet.start(m.options, (online) => reply({ type: "progress", online })).then(
      (f) => {
        fleet = f;
        reply({ type: "started" });
      },
      (err: Error) => reply({ type: "error", message: err.stack ?? err.message }),
    );
  } else if (m.type === "stats") {
    if (fleet) reply({ type: "stats", id: m.id, stats: fleet.stats() });
    else reply({ type: "error", message: "stats asked before the fleet started" });
  } else if (m.type === "stop") {
    void (fleet?.stop() ?? Promise.resolve()).finally(() => {
      reply({ type: "stopped" });
      process.disconnect();
      process.exit(0);
    });
  }
});
// The parent went away without a stop: nothing here may outlive it.
process.on("disconnect", () => process.exit(0));
