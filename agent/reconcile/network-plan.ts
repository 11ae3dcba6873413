/**
 * The networks and published ports of a document, placed on this host: a
 * pure function of the document, what db.json records of the networks made
 * before, and the host's routes and bound ports. `subnet: "auto"` takes the
 * first free /24 of AUTO_POOL; a subnet of the operator's that overlaps a host
 * route or another network is refused (E_NETWORK_CONFLICT), and so is a
 * published port something on the host has bound (E_PORT_IN_USE). The agent
 * runs this before the first step of an apply, so a refusal stops nothing.
 */
import type { NetworkRecord } from "../../schemas/db.js";
import type { DesiredState } from "../../schemas/desired.js";
import {
  type BoundPort,
  type Cidr,
  cidrOverlaps,
  cidrText,
  DEFAULT_NETWORK,
  type HostNetworkFacts,
  type NetworkSpec,
  type PortMapping,
  parseCidr,
  parsePort,
  serviceNetworks,
} from "../../schemas/network.js";
import { FleetError } from "../errors.js";
import { canonicalJson } from "../protocol/canonical-json.js";

/** Where automatic subnets come from: 10.89.0.0/16, as /24s. */
export const AUTO_POOL: Cidr = { base: (10 * 256 + 89) * 65536, prefix: 16 };
const AUTO_PREFIX = 24;

export interface NetworkPlanInput {
  desired: DesiredState;
  /** The networks made before, by bridge. */
  recorded: Record<string, NetworkRecord>;
  host: HostNetworkFacts;
  /** Ports the services running now publish: the host sees them as ours, not as taken. */
  ownPorts: PortMapping[];
  /** The bridge's link name for a network and its subnet (at most 15 characters). */
  bridgeName(network: string, subnet: string): string;
}

const DEFAULT_SPEC: NetworkSpec = { subnet: "auto", ipv6: false, internal: false };

/** The networks the document's services use, with their definitions: declared ones and the default one. */
export function usedNetworks(desired: DesiredState): Map<string, NetworkSpec> {
  const used = new Map<string, NetworkSpec>();
  for (const s of Object.values(desired.services))
    for (const n of serviceNetworks(s)) used.set(n, n === DEFAULT_NETWORK ? DEFAULT_SPEC : desired.networks[n]!);
  return used;
}

/** Host routes that are not our own bridges' nor the default route: what a network must not overlap. */
function foreignRoutes(input: NetworkPlanInput) {
  const ours = new Set(Object.keys(input.recorded));
  return input.host.routes.filter((r) => r.dest.prefix > 0 && !ours.has(r.iface));
}

/** The recorded network of this name and definition, if one was made. */
const recordedAs = (input: NetworkPlanInput, name: string, spec: NetworkSpec) =>
  Object.values(input.recorded).find((r) => r.name === name && canonicalJson(r.spec) === canonicalJson(spec));

function autoSubnet(taken: Cidr[], network: string): Cidr {
  const count = 2 ** (AUTO_PREFIX - AUTO_POOL.prefix);
  for (let i = 0; i < count; i++) {
    const c = { base: AUTO_POOL.base + i * 2 ** (32 - AUTO_PREFIX), prefix: AUTO_PREFIX };
    if (!taken.some((t) => cidrOverlaps(t, c))) return c;
  }
  throw new FleetError(
    "E_NETWORK_CONFLICT",
    `networks.${network}.subnet: no free /${AUTO_PREFIX} left in ${cidrText(AUTO_POOL)} for "auto"`,
  );
}

/**
 * Each network the document uses, placed (by name): a recorded one whose
 * definition is unchanged keeps its subnet and bridge; a new one gets its own,
 * and an "auto" one avoids the subnets of networks still recorded.
 */
// @long one pass over the networks, explicit ones first, each checked against all placed before it
export function placeNetworks(input: NetworkPlanInput): Record<string, NetworkRecord> {
  const routes = foreignRoutes(input);
  const placed: Record<string, NetworkRecord> = {};
  const taken: { cidr: Cidr; what: string }[] = routes.map((r) => ({
    cidr: r.dest,
    what: `the host's route to ${cidrText(r.dest)} (dev ${r.iface})`,
  }));
  const used = [...usedNetworks(input.desired)].sort(([a], [b]) => (a < b ? -1 : 1));
  // Explicit subnets first, so an "auto" one never takes a range an operator named.
  used.sort(([, a], [, b]) => Number(a.subnet === "auto") - Number(b.subnet === "auto"));
  for (const [name, spec] of used) {
    const kept = recordedAs(input, name, spec);
    const wanted = kept ? parseCidr(kept.subnet) : spec.subnet === "auto" ? undefined : parseCidr(spec.subnet);
    let cidr: Cidr;
    if (wanted) {
      const clash = taken.find((t) => cidrOverlaps(t.cidr, wanted));
      if (clash)
        throw new FleetError(
          "E_NETWORK_CONFLICT",
          `networks.${name}.subnet: ${cidrText(wanted)} overlaps ${clash.what}`,
        );
      cidr = wanted;
    } else
      cidr = autoSubnet(
        taken.map((t) => t.cidr),
        name,
      );
    const subnet = cidrText(cidr);
    taken.push({ cidr, what: `network ${name} (${subnet})` });
    placed[name] = { name, spec, subnet, bridge: kept ? kept.bridge : input.bridgeName(name, subnet) };
  }
  return placed;
}

const covers = (a: string, b: string) => !a || !b || a === b;

/** What holds a published port on the host: a bound socket or a DNAT rule that is not one of `ownPorts`; undefined when free. */
export function portHolder(p: PortMapping, host: HostNetworkFacts, ownPorts: PortMapping[]): BoundPort | undefined {
  const ours = (b: BoundPort) =>
    ownPorts.some((o) => o.protocol === b.protocol && o.hostPort === b.port && covers(o.hostIp, b.ip));
  return host.bound.find(
    (b) => b.protocol === p.protocol && b.port === p.hostPort && covers(b.ip, p.hostIp) && !ours(b),
  );
}

/** Why a published port cannot be had, for E_PORT_IN_USE. */
export function portInUse(p: PortMapping, busy: BoundPort): string {
  const how = busy.forwarded ? "forwarded by a firewall rule (another container's published port?)" : "bound";
  return `host port ${p.hostPort}/${p.protocol} is already ${how} on the host (${busy.ip || "all addresses"})`;
}

/** Refuses a published port that something on the host (not one of our services) has bound. */
export function checkPorts(input: NetworkPlanInput): void {
  for (const [name, s] of Object.entries(input.desired.services).sort(([a], [b]) => (a < b ? -1 : 1))) {
    s.ports.forEach((text, i) => {
      const p = parsePort(text)!;
      const busy = portHolder(p, input.host, input.ownPorts);
      if (busy) throw new FleetError("E_PORT_IN_USE", `services.${name}.ports[${i}]: ${portInUse(p, busy)}`);
    });
  }
}
