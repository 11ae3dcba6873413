/**
 * The device's container networks across applies: before the first step of
 * an apply the document's networks are placed (network-plan.ts: refused
 * there on a conflict, so nothing has stopped) and recorded in db.json; once
 * the apply has converged, networks no service uses any more are taken down.
 */
import type { NetworkRecord } from "../../schemas/db.js";
import type { DesiredState } from "../../schemas/desired.js";
import { type HostNetworkFacts, type PortMapping, parsePort } from "../../schemas/network.js";
import { canonicalJson } from "../protocol/canonical-json.js";
import type { StateDb } from "../state/db.js";
import { checkPorts, placeNetworks, usedNetworks } from "./network-plan.js";

/** What the reconciler needs of the runtime's networking. */
export interface NetworkDriver {
  /** The host's routes and its ports bound or forwarded, as this process's network namespace sees them. */
  hostNetwork(): Promise<HostNetworkFacts>;
  /** The bridge's link name for a new network (at most 15 characters, unique to this state root). */
  bridgeName(network: string, subnet: string): string;
  /** Takes down a network's bridge and all that was made for it; nothing to do when it is gone already. */
  removeNetwork(network: NetworkRecord): Promise<void>;
  /** Takes down the networking a container that no longer exists left behind (a crash mid-start). */
  sweep(): Promise<void>;
  /** Throws what is wrong when the container's networking is not as it was set up (CNI CHECK). */
  check(containerId: string): Promise<void>;
  /** A container's address on each network it joined, by network name, and a rewrite in place of its /etc/hosts with peers. */
  peerFile(containerId: string): {
    addresses: Record<string, string>;
    write(peers: { address: string; names: string[] }[]): void;
  };
}

export class DeviceNetworks {
  constructor(
    private readonly db: StateDb,
    private readonly driver: NetworkDriver,
  ) {}

  /** Places the document's networks and checks its ports; throws E_NETWORK_CONFLICT or E_PORT_IN_USE. Returns them by name. */
  async prepare(desired: DesiredState): Promise<Record<string, NetworkRecord>> {
    // A document on no network asks nothing of the host (and needs neither iptables nor the plugins).
    if (usedNetworks(desired).size === 0) return {};
    const recorded = this.db.data.networks ?? {};
    const ownPorts: PortMapping[] = Object.values(this.db.data.services).flatMap((s) =>
      s.spec.ports.flatMap((p) => parsePort(p) ?? []),
    );
    const input = {
      desired,
      recorded,
      host: await this.driver.hostNetwork(),
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

  /**
   * Gives every service on a network its peers by name: each other service
   * that shares a network with it, at its address on the first one shared;
   * and records each one's addresses in db.json.
   */
  async refreshPeers(): Promise<void> {
    const members = Object.entries(this.db.data.services)
      .filter(([, r]) => (r.networks ?? []).length > 0)
      .map(([name, r]) => ({ name, id: r.containerId, ...this.driver.peerFile(r.containerId) }));
    for (const m of members) {
      const peers = members.flatMap((o) => {
        const shared = o === m ? undefined : Object.keys(m.addresses).find((n) => o.addresses[n]);
        return shared ? [{ address: o.addresses[shared]!, names: [o.name] }] : [];
      });
      m.write(peers);
    }
    // Each service's addresses, by network, in its record: what a restarted agent (or an operator) reads.
    const stale = members.filter(
      (m) => canonicalJson(this.db.data.services[m.name]?.addresses ?? {}) !== canonicalJson(m.addresses),
    );
    if (stale.length === 0) return;
    await this.db.update((d) => {
      for (const m of stale) {
        const rec = d.services[m.name];
        if (rec?.containerId === m.id) rec.addresses = m.addresses;
      }
    });
  }

  /** The services a service about to start on `networks` will share one with, at their address on the first one shared. */
  peersOf(service: string, networks: NetworkRecord[]): { address: string; names: string[] }[] {
    return Object.entries(this.db.data.services).flatMap(([name, r]) => {
      const shared = name === service ? undefined : networks.find((n) => r.addresses?.[n.name]);
      return shared ? [{ address: r.addresses![shared.name]!, names: [name] }] : [];
    });
  }

  /** Why an adopted container's networking is no longer whole (a veth deleted by hand, say); undefined when it is. */
  async lost(containerId: string): Promise<string | undefined> {
    try {
      await this.driver.check(containerId);
      return undefined;
    } catch (err) {
      return (err as Error).message;
    }
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
