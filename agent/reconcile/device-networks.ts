/**
 * The device's container networks across applies: before the first step of
 * an apply the document's networks are placed (network-plan.ts: refused
 * there on a conflict, so nothing has stopped) and recorded in db.json; once
 * the apply has converged, networks no service uses any more are taken down.
 */
import type { NetworkRecord } from "../../schemas/db.js";
import type { DesiredState } from "../../schemas/desired.js";
import { type HostNetworkFacts, type PortMapping, parsePort } from "../../schemas/network.js";
import type { StateDb } from "../state/db.js";
import { checkPorts, placeNetworks } from "./network-plan.js";

/** What the reconciler needs of the runtime's networking. */
export interface NetworkDriver {
  /** The host's routes and bound ports, as this process's network namespace sees them. */
  hostNetwork(): HostNetworkFacts;
  /** The bridge's link name for a new network (at most 15 characters, unique to this state root). */
  bridgeName(network: string, subnet: string): string;
  /** Takes down a network's bridge and all that was made for it; nothing to do when it is gone already. */
  removeNetwork(network: NetworkRecord): Promise<void>;
}

export class DeviceNetworks {
  constructor(
    private readonly db: StateDb,
    private readonly driver: NetworkDriver,
  ) {}

  /** Places the document's networks and checks its ports; throws E_NETWORK_CONFLICT or E_PORT_IN_USE. Returns them by name. */
  async prepare(desired: DesiredState): Promise<Record<string, NetworkRecord>> {
    const recorded = this.db.data.networks ?? {};
    const ownPorts: PortMapping[] = Object.values(this.db.data.services).flatMap((s) =>
      (s.spec.ports ?? []).flatMap((p) => parsePort(p) ?? []),
    );
    const input = {
      desired,
      recorded,
      host: this.driver.hostNetwork(),
      ownPorts,
      bridgeName: (n: string, s: string) => this.driver.bridgeName(n, s),
    };
    const placed = placeNetworks(input);
    checkPorts(input);
    const fresh = Object.values(placed).filter((p) => !recorded[p.bridge]);
    if (fresh.length > 0)
      await this.db.update((d) => {
        d.networks ??= {};
        for (const p of fresh) d.networks[p.bridge] = p;
      });
    return placed;
  }

  /** Takes down the networks recorded that no service of db.json uses. */
  async prune(): Promise<void> {
    const inUse = new Set(Object.values(this.db.data.services).flatMap((s) => (s.networks ?? []).map((n) => n.bridge)));
    for (const rec of Object.values(this.db.data.networks ?? {})) {
      if (inUse.has(rec.bridge)) continue;
      await this.driver.removeNetwork(rec);
      await this.db.update((d) => {
        delete d.networks?.[rec.bridge];
      });
    }
  }
}
