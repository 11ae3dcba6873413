/**
 * What the host's network looks like to the planner: the main routing table
 * (/proc/net/route), the ports bound on it (/proc/net/{tcp,udp}{,6}) and the
 * ports its firewall forwards elsewhere (DNAT rules: another agent's
 * published ports, Docker's), as the network namespace of this process sees
 * them.
 */
import { readFileSync } from "node:fs";
import { type BoundPort, type HostNetworkFacts, type HostRoute, numberToIpv4 } from "../../schemas/network.js";
import { isErrno } from "../errors.js";

/** A little-endian hex word of /proc/net as an IPv4 number. */
const leWord = (hex: string) => {
  const n = Number.parseInt(hex, 16);
  return ((n & 0xff) * 2 ** 24 + ((n >>> 8) & 0xff) * 65536 + ((n >>> 16) & 0xff) * 256 + (n >>> 24)) >>> 0;
};

/** Prefix length of a netmask number. */
const maskBits = (mask: number) => {
  let bits = 0;
  for (let m = mask; m & 0x80000000; m = (m << 1) >>> 0) bits++;
  return bits;
};

/** /proc/net/route's lines, parsed. */
export function parseRoutes(text: string): HostRoute[] {
  const routes: HostRoute[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const mask = leWord(f[7]!);
    routes.push({ iface: f[0]!, dest: { base: leWord(f[1]!), prefix: maskBits(mask) } });
  }
  return routes;
}

/** An address of /proc/net/tcp or tcp6 as text; "" for every address, IPv4-mapped IPv6 as IPv4. */
function socketAddress(hex: string): string {
  if (hex.length === 8) {
    const n = leWord(hex);
    return n === 0 ? "" : numberToIpv4(n);
  }
  const words = (hex.match(/.{8}/g) ?? []).map((w) => leWord(w));
  if (words.every((w) => w === 0)) return "";
  if (words[0] === 0 && words[1] === 0 && words[2] === 0xffff) return numberToIpv4(words[3]!);
  return words
    .map((w) =>
      w
        .toString(16)
        .padStart(8, "0")
        .replace(/(.{4})/, "$1:"),
    )
    .join(":");
}

/** Listening TCP sockets (state 0A) or bound UDP sockets (state 07) of one /proc/net table. */
export function parseSockets(text: string, protocol: "tcp" | "udp"): BoundPort[] {
  const wanted = protocol === "tcp" ? "0A" : "07";
  const out: BoundPort[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== wanted) continue;
    const [addr, port] = f[1]!.split(":");
    const ip = socketAddress(addr!);
    // A socket on one IPv6 address ([::1], fe80::…) takes no published port: those are IPv4 only.
    if (ip.includes(":")) continue;
    out.push({ protocol, ip, port: Number.parseInt(port!, 16) });
  }
  return out;
}

/** A /proc/net table; empty when the kernel has none (IPv6 turned off). */
function table(name: string): string {
  try {
    return readFileSync(`/proc/net/${name}`, "utf8");
  } catch (err) {
    if (isErrno(err, "ENOENT")) return "";
    throw err;
  }
}

/** The ports of a `--dport 80`, `--dports 80,443,8000:8010` or `--ports …` value. */
function portList(value: string): number[] {
  return value.split(",").flatMap((part) => {
    const [from, to = from] = part.split(":").map(Number);
    if (!from || !to || to < from || to > 65535) return [];
    return Array.from({ length: to - from + 1 }, (_, i) => from + i);
  });
}

/**
 * Host ports that DNAT or REDIRECT rules of `iptables -t nat -S` take
 * (portmap's `CNI-DN-…` chains, Docker's, a transparent proxy's), one port
 * or a multiport list or range: taken as surely as a bound socket.
 */
export function parseForwardedPorts(rules: string): BoundPort[] {
  const out: BoundPort[] = [];
  for (const line of rules.split("\n")) {
    const args = line.trim().split(/\s+/);
    const target = args[args.indexOf("-j") + 1];
    if (args[0] !== "-A" || (target !== "DNAT" && target !== "REDIRECT")) continue;
    const at = (flag: string) => args.indexOf(flag);
    const protocol = args[at("-p") + 1];
    const flag = ["--dport", "--dports", "--ports"].find((f) => at(f) > 0);
    if (at("-p") < 0 || !flag || (protocol !== "tcp" && protocol !== "udp")) continue;
    const d = at("-d");
    const ip = d > 0 && args[d - 1] !== "!" ? (args[d + 1] ?? "").replace(/\/32$/, "") : "";
    for (const port of portList(args[at(flag) + 1] ?? "")) out.push({ protocol, ip, port, forwarded: true });
  }
  return out;
}

/**
 * Whether the legacy iptables has a nat table here: a firewall written with
 * the other variant than `iptables` (legacy beside nf_tables) forwards ports
 * that `iptables -S` does not list. Read from /proc, which loads nothing.
 */
export function hasLegacyNatTable(): boolean {
  return table("ip_tables_names")
    .split("\n")
    .some((l) => l.trim() === "nat");
}

/** The host's routes and bound ports; `forwarded` is what parseForwardedPorts found in its firewall. */
export function readHostNetwork(forwarded: BoundPort[] = []): HostNetworkFacts {
  return {
    routes: parseRoutes(table("route")),
    bound: [
      ...forwarded,
      ...parseSockets(table("tcp"), "tcp"),
      ...parseSockets(table("tcp6"), "tcp"),
      ...parseSockets(table("udp"), "udp"),
      ...parseSockets(table("udp6"), "udp"),
    ],
  };
}
