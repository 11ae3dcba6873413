/**
 * Staged rollouts at CI scale: 200 SIMULATED devices (real agents on real
 * MQTT sessions, wired as the daemon wires them; a simulated runtime under
 * them, no containers) behind a real mosquitto, driven by the real Rollout,
 * FleetClient and FleetView that `fleetctl rollout` uses.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FleetClient } from "../../agent/fleet/fleet-client.js";
import { FleetView } from "../../agent/fleet/fleet-view.js";
import { Rollout } from "../../agent/fleet/rollout.js";
import { inRolloutWave } from "../../agent/protocol/waves.js";
import type { RolloutProgress } from "../../schemas/rollout.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { SimulatedFleet, simulatedDeviceIds } from "../support/sim/simulated-fleet.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const N = 200;
const GROUP = "sim";
const IDS = simulatedDeviceIds(N, "ci");
const IMAGE = "registry.local:5000/sim/app:1";
let broker: MosquittoFixture;
let fleet: SimulatedFleet;
let client: FleetClient;
let view: FleetView;

const device = (id: string) => fleet.devices.find((d) => d.deviceId === id)!;
const inWave = (deployment: string, percent: number) => IDS.filter((id) => inRolloutWave(id, deployment, percent));

/** How the tests wait on the fleet: a timeout shows how many devices are in each phase. */
const fleetWait = (timeoutMs = 20_000): WaitForOptions => ({
  timeoutMs,
  context: () => `phases: ${JSON.stringify(fleet.stats().phases)}`,
});

/** A deployment name whose 10% wave holds between 5% and 15% of the devices (so the wave is neither empty nor all). */
function deploymentNamed(base: string): string {
  for (let i = 0; ; i++) {
    const name = `${base}.${i}`;
    const n = inWave(name, 10).length;
    if (n >= N * 0.05 && n <= N * 0.15) return name;
  }
}

function rollout(
  deployment: string,
  generation: number,
  command: string[] | undefined,
  onProgress?: (p: RolloutProgress, wave: { percent: number; counts: Record<string, number> }) => void,
): Promise<RolloutProgress> {
  const raw = {
    apiVersion: "fleetlet/v1",
    deployment,
    services: { app: { image: IMAGE, ...(command ? { command } : {}), stopTimeoutMs: 1000 } },
    update: { healthyWithinMs: 800 },
  };
  return new Rollout({
    client,
    view,
    group: GROUP,
    raw,
    file: "fleet-sim.test",
    waves: [10, 100],
    healthyWithinMs: 20_000,
    maxFailures: { count: 0 },
    generation,
    tickMs: 100,
    ...(onProgress ? { onProgress } : {}),
  }).run();
}

beforeAll(async () => {
  broker = await startMosquitto();
  fleet = await SimulatedFleet.start({ url: broker.url, groups: [GROUP], deviceIds: IDS, heartbeatMs: 0 });
  client = await FleetClient.connect({ url: broker.url, prefix: "fleet" });
  view = await FleetView.open(client);
  await waitFor(
    "every device online and reporting",
    () => (view.list(GROUP).filter((d) => d.online && d.reported).length === N ? true : undefined),
    fleetWait(),
  );
});

afterAll(async () => {
  await fleet?.stop();
  await client?.close();
  await broker?.stop();
});

describe("a rollout to 200 simulated devices", () => {
  let good: string;

  it("widens wave by wave: when wave 1 (10%) finishes only its devices run the deployment, then every device converges", async () => {
    good = deploymentNamed("sim-good");
    const firstWave = new Set(inWave(good, 10));
    let atWaveEnd: Set<string> | undefined;
    const progress = await rollout(good, 1, undefined, (_p, w) => {
      // Called on every judgement; the one with nothing pending and nothing failed ends wave 1, before wave 2 is published.
      if (w.percent === 10 && w.counts.pending === 0 && w.counts.failed === 0 && !atWaveEnd) {
        atWaveEnd = new Set(
          fleet.devices.filter((d) => d.store.db.data.desired?.deployment === good).map((d) => d.deviceId),
        );
      }
    });
    expect(progress.state, progress.reason).toBe("done");
    expect(atWaveEnd).toEqual(firstWave);
    for (const id of IDS) {
      const r = device(id).agent.reported();
      expect(r, id).toMatchObject({ deployment: good, generation: 1, phase: "converged", lastGood: good });
      expect(r.services.app?.state, id).toBe("running");
      expect(view.devices.get(id)?.reported, id).toMatchObject({
        deployment: good,
        phase: "converged",
        lastGood: good,
      });
    }
  });

  it("halts a broken deployment after wave 1: that wave rolls back, the others keep the old deployment untouched", async () => {
    const broken = deploymentNamed("sim-broken");
    const firstWave = new Set(inWave(broken, 10));
    const containersBefore = new Map(
      IDS.map((id) => [
        id,
        device(id)
          .runtime.list()
          .map((c) => `${c.id} ${c.startedAt}`),
      ]),
    );
    // The simulated runtime's convention: a container whose command is ["exit", "3"] exits with 3 soon after its start.
    const progress = await rollout(broken, 2, ["exit", "3"]);
    expect(progress.state).toBe("halted");
    expect(progress.wave).toBe(0);
    expect(progress.failures.length).toBeGreaterThan(0);
    for (const f of progress.failures) expect(firstWave.has(f.deviceId), f.deviceId).toBe(true);

    await waitFor(
      "the first wave rolled back",
      () =>
        [...firstWave].every(
          (id) =>
            device(id).agent.reported().phase === "rolledBack" &&
            device(id).agent.reported().services.app?.state === "running",
        )
          ? true
          : undefined,
      fleetWait(),
    );
    for (const id of IDS) {
      const d = device(id);
      const r = d.agent.reported();
      if (firstWave.has(id)) {
        expect(r.phase, id).toBe("rolledBack");
        expect(r.lastGood, id).toBe(good);
        expect(d.store.db.data.services.app?.deployment, id).toBe(good);
      } else {
        expect(r, id).toMatchObject({ deployment: good, generation: 1, phase: "converged", lastGood: good });
        expect(
          d.runtime.list().map((c) => `${c.id} ${c.startedAt}`),
          id,
        ).toEqual(containersBefore.get(id));
      }
    }
  });
});
