import { describe, expect, it } from "vitest";
import { DeviceNetworks, type NetworkDriver } from "../../agent/reconcile/device-networks.js";
import { StateDb } from "../../agent/state/db.js";
import type { NetworkRecord } from "../../schemas/db.js";
import { type DesiredStateInput, desiredState } from "../../schemas/desired.js";
import { parseCidr } from "../../schemas/network.js";

/** A driver that records what it is asked; `bound` and `routes` are the host it describes. */
function fakeDriver(host: Partial<Awaited<ReturnType<NetworkDriver["hostNetwork"]>>> = {}) {
  const calls: string[] = [];
  const driver: NetworkDriver = {
    hostNetwork: async () => {
      calls.push("hostNetwork");
      return { routes: host.routes ?? [], bound: host.bound ?? [] };
    },
    bridgeName: (n) => `fl-${n}`,
    removeNetwork: async (n) => void calls.push(`remove ${n.bridge}`),
    sweep: async () => undefined,
    check: async () => undefined,
    peerFile: () => ({ addresses: {}, write: () => undefined }),
  };
  return { driver, calls };
}

const doc = (extra: Partial<DesiredStateInput>) =>
  desiredState.parse({ apiVersion: "fleetlet/v1", deployment: "d", generation: 1, services: {}, ...extra });

describe("the device's networks across applies", () => {
  it("asks nothing of the host for a document on no network", async () => {
    const { driver, calls } = fakeDriver();
    const placed = await new DeviceNetworks(StateDb.memory(), driver).prepare(doc({ services: { a: { image: "x" } } }));
    expect(placed).toEqual({});
    expect(calls).toEqual([]);
  });

  it("records the networks it places, by bridge, and refuses a conflict before recording anything", async () => {
    const db = StateDb.memory();
    const { driver } = fakeDriver({ bound: [{ protocol: "tcp", ip: "", port: 80 }] });
    const networks = new DeviceNetworks(db, driver);
    const ok = doc({ networks: { a: {} }, services: { s: { image: "x", networks: ["a"] } } });
    expect((await networks.prepare(ok)).a).toMatchObject({ bridge: "fl-a", subnet: "10.89.0.0/24" });
    expect(Object.keys(db.data.networks ?? {})).toEqual(["fl-a"]);
    const clash = doc({ networks: { b: {} }, services: { s: { image: "x", networks: ["b"], ports: ["80:80"] } } });
    await expect(networks.prepare(clash)).rejects.toMatchObject({ code: "E_PORT_IN_USE" });
    expect(Object.keys(db.data.networks ?? {})).toEqual(["fl-a"]);
  });

  it("takes down the networks no service uses, and keeps the ones in use", async () => {
    const db = StateDb.memory();
    const rec = (name: string): NetworkRecord => ({
      name,
      spec: { subnet: "auto", ipv6: false, internal: false },
      subnet: "10.89.0.0/24",
      bridge: `fl-${name}`,
    });
    await db.update((d) => {
      d.networks = { "fl-used": rec("used"), "fl-gone": rec("gone") };
      d.services.s = {
        containerId: "s.1",
        hash: "h",
        image: "x",
        digest: "sha256:0",
        restarts: 0,
        deployment: "d",
        spec: doc({ services: { s: { image: "x" } } }).services.s!,
        networks: [rec("used")],
      };
    });
    const { driver, calls } = fakeDriver({ routes: [{ dest: parseCidr("10.89.0.0/24")!, iface: "fl-used" }] });
    await new DeviceNetworks(db, driver).prune();
    expect(calls).toEqual(["remove fl-gone"]);
    expect(Object.keys(db.data.networks ?? {})).toEqual(["fl-used"]);
  });
});
