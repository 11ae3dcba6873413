/** `npm run bench [-- NAME [options]]`: runs the named benchmark, or all of them. */
import { agentBench } from "./agent-bench.js";
import { deviceBench } from "./device-bench.js";
import { fleetBench } from "./fleet-bench.js";
import { networkBench } from "./network-bench.js";
import { pullBench } from "./pull-bench.js";
import { startBench } from "./start-bench.js";
import { trafficBench } from "./traffic-bench.js";

const BENCHES: Record<string, (args: string[]) => Promise<void>> = {
  start: startBench,
  pull: pullBench,
  agent: agentBench,
  fleet: fleetBench,
  traffic: trafficBench,
  device: deviceBench,
  network: networkBench,
};

const [name, ...args] = process.argv.slice(2);
const selected = name ? [name] : Object.keys(BENCHES);
for (const n of selected) {
  const bench = BENCHES[n];
  if (!bench) {
    console.error(`bench: unknown benchmark "${n}"; known: ${Object.keys(BENCHES).join(", ")}`);
    process.exit(2);
  }
  await bench(args);
}
