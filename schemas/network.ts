/**
 * Container networks in the desired document: the networks a deployment
 * declares, the ports a service publishes ("8080:80", "127.0.0.1:9090:9090",
 * "5353:53/udp"), and the IPv4 arithmetic both need. The document-wide rules
 * (a service names only declared networks, no host port published twice, no
 * ports with `network: host`) are checked by `checkServiceNetworks`, which
 * desired.ts runs as a refinement so each message names the field.
 */
import * as z from "./zod.js";

const PORT_SYNTAX = /^(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/;

/** A published port, parsed: the host address ("" for every address), the ports, the protocol. */
export interface PortMapping {
  hostIp: string;
  hostPort: number;
  containerPort: number;
  protocol: "tcp" | "udp";
}

/** The IPv4 address as a 32-bit number, or undefined when it is not dotted-quad IPv4. */
export function ipv4ToNumber(ip: string): number | undefined {
  const parts = ip.split(".");
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return undefined;
    n = n * 256 + Number(p);
  }
  return n;
}

export function numberToIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
}

export interface Cidr {
  /** The network address as a number. */
  base: number;
  prefix: number;
}

/** "10.1.2.0/24" parsed; undefined for anything else, or when bits below the prefix are set. */
export function parseCidr(text: string): Cidr | undefined {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(text);
  if (!m) return undefined;
  const base = ipv4ToNumber(m[1]!);
  const prefix = Number(m[2]);
  if (base === undefined || prefix > 32) return undefined;
  if (base % 2 ** (32 - prefix) !== 0) return undefined;
  return { base, prefix };
}

export const cidrText = (c: Cidr) => `${numberToIpv4(c.base)}/${c.prefix}`;

/** Whether two ranges share an address. */
export function cidrOverlaps(a: Cidr, b: Cidr): boolean {
  const aEnd = a.base + 2 ** (32 - a.prefix);
  const bEnd = b.base + 2 ** (32 - b.prefix);
  return a.base < bEnd && b.base < aEnd;
}

/** Parses "[hostIp:]hostPort:containerPort[/tcp|udp]"; undefined when the syntax or a number is wrong. */
export function parsePort(text: string): PortMapping | undefined {
  const m = PORT_SYNTAX.exec(text);
  if (!m) return undefined;
  // 0.0.0.0 is every address, to the portmap plugin as to the planner (it was one address to the planner
  // only, so a port bound on 127.0.0.1 (the agent's API) or on one of the device's addresses was taken).
  const hostIp = m[1] === "0.0.0.0" ? "" : (m[1] ?? "");
  const hostPort = Number(m[2]);
  const containerPort = Number(m[3]);
  if (hostIp && ipv4ToNumber(hostIp) === undefined) return undefined;
  if (hostPort < 1 || hostPort > 65535 || containerPort < 1 || containerPort > 65535) return undefined;
  return { hostIp, hostPort, containerPort, protocol: (m[4] as "tcp" | "udp" | undefined) ?? "tcp" };
}

export const portSpec = z
  .string()
  .check(
    z.refine(
      (p) => parsePort(p) !== undefined,
      'expected "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]" with ports 1-65535 and an IPv4 host address',
    ),
  );

/**
 * The private ranges (RFC 1918) an explicit subnet must lie in. Anywhere else
 * the bridge's route would take from the host the addresses it reaches by its
 * default route or its local table (127.0.0.0/8, the cloud's 169.254.169.254,
 * a public DNS server, the broker or the registry), for containers to answer.
 */
const PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/** Whether `inner` lies wholly within `outer`. */
const within = (inner: Cidr, outer: Cidr) =>
  inner.prefix >= outer.prefix &&
  Math.floor(inner.base / 2 ** (32 - outer.prefix)) === outer.base / 2 ** (32 - outer.prefix);

const subnet = z.string().check(
  z.refine(
    (s) => s === "auto" || (parseCidr(s) !== undefined && parseCidr(s)!.prefix >= 8 && parseCidr(s)!.prefix <= 28),
    {
      message: 'expected "auto" or an IPv4 network such as 10.20.0.0/24 (prefix 8 to 28, no host bits set)',
      abort: true,
    },
  ),
  z.refine(
    (s) => s === "auto" || PRIVATE_RANGES.some((r) => within(parseCidr(s)!, parseCidr(r)!)),
    `expected a private network (within ${PRIVATE_RANGES.join(", ").replace(/, (?=[^,]*$)/, " or ")}): any other would take the host's own routes to those addresses`,
  ),
);

export const networkSpec = z.strictObject({
  /** "auto": a free private /24 the agent picks (and records); or a network of the operator's. */
  subnet: z._default(subnet, "auto"),
  ipv6: z._default(z.literal(false, { error: "IPv6 container networks are not supported yet: expected false" }), false),
  /** No gateway and no route out: the services on it reach each other only. */
  internal: z._default(z.boolean(), false),
});
export type NetworkSpec = z.output<typeof networkSpec>;

/** The network a service with ports but no networks joins: one per deployment. */
export const DEFAULT_NETWORK = "_default";

/** The networks a service joins: its own, or the deployment's default one when it only publishes ports. */
export function serviceNetworks(s: { network: string; networks: string[]; ports: string[] }): string[] {
  if (s.network === "host") return [];
  if (s.networks.length > 0) return s.networks;
  return s.ports.length > 0 ? [DEFAULT_NETWORK] : [];
}

interface Issue {
  path: (string | number)[];
  message: string;
}

/** Two published ports that would take the same host port: same protocol and port, and either address covers the other. */
const samePortOnHost = (a: PortMapping, b: PortMapping) =>
  a.protocol === b.protocol && a.hostPort === b.hostPort && (!a.hostIp || !b.hostIp || a.hostIp === b.hostIp);

/** The document-wide rules, as issues naming the field. */
export function checkServiceNetworks(doc: {
  networks: Record<string, NetworkSpec>;
  services: Record<string, { network: string; networks: string[]; ports: string[] }>;
}): Issue[] {
  const issues: Issue[] = [];
  const declared = Object.keys(doc.networks);
  const published: { port: PortMapping; where: string }[] = [];
  for (const [name, s] of Object.entries(doc.services)) {
    if (s.network === "host" && s.networks.length > 0)
      issues.push({ path: ["services", name, "networks"], message: 'cannot join networks with network "host"' });
    if (s.network === "host" && s.ports.length > 0)
      issues.push({ path: ["services", name, "ports"], message: 'cannot publish ports with network "host"' });
    s.networks.forEach((n, i) => {
      if (!doc.networks[n])
        issues.push({
          path: ["services", name, "networks", i],
          message: `unknown network "${n}" (declared: ${declared.length ? declared.join(", ") : "none"})`,
        });
      else if (s.networks.indexOf(n) !== i)
        issues.push({ path: ["services", name, "networks", i], message: `network "${n}" is listed twice` });
    });
    const reachable = serviceNetworks(s).some((n) => n === DEFAULT_NETWORK || doc.networks[n]?.internal === false);
    if (s.ports.length > 0 && s.networks.length > 0 && !reachable)
      issues.push({
        path: ["services", name, "ports"],
        message: "cannot publish ports from internal networks only: join a network that is not internal",
      });
    s.ports.forEach((text, i) => {
      const port = parsePort(text);
      if (!port) return; // the field's own check has said why
      const where = `services.${name}.ports[${i}]`;
      const clash = published.find((p) => samePortOnHost(p.port, port));
      if (clash)
        issues.push({
          path: ["services", name, "ports", i],
          message: `host port ${port.hostPort}/${port.protocol} is already published by ${clash.where}`,
        });
      published.push({ port, where });
    });
  }
  return issues;
}

/** A route of the host's main table: where it goes, and through which link. */
export interface HostRoute {
  dest: Cidr;
  iface: string;
}

/** A socket bound on the host: a TCP listener or a bound UDP socket ("" for every address). */
export interface BoundPort {
  protocol: "tcp" | "udp";
  ip: string;
  port: number;
  /** Taken by a firewall rule (DNAT) rather than a socket. */
  forwarded?: boolean;
}

/** What the planner must know of the host to place networks and ports. */
export interface HostNetworkFacts {
  routes: HostRoute[];
  bound: BoundPort[];
}
