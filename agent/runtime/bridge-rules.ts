/**
 * The firewall rules of our bridges, in two chains of our own: in the filter
 * table FLEETLET-ISOLATION (jumped to first from FORWARD) drops, at its head,
 * what one of our bridges (all named `fl-…`) would route to another, what is
 * routed in to a bridge that is neither a published port nor a reply, and
 * for an internal network everything routed in or out; at its end it
 * accepts what is left of our bridges' traffic, so a FORWARD policy of DROP
 * (ufw's, Docker's) does not stop it; in the nat table FLEETLET-MASQ
 * (jumped to from POSTROUTING) masquerades what leaves a network that is not
 * internal by any other link; and in the filter table FLEETLET-LOCALNET
 * (jumped to first from INPUT) drops what arrives from any of our bridges
 * for 127.0.0.0/8 unless it is a published port's traffic or a reply: the
 * portmap plugin turns route_localnet on for the bridges (for ports
 * published on 127.0.0.1), which otherwise lets a container that can forge
 * packets (NET_RAW, granted only by `fleetlet run --cap-add`) reach what the
 * device serves on its loopback. One masquerade rule per network, rather than
 * the bridge plugin's chain per container: cheaper, and nothing is left
 * behind when a container's veth vanished before its DEL (the plugin finds
 * the addresses to unmasquerade in the container's interface). The CNI
 * plugins use iptables too (this host's is the nf_tables variant), so every
 * rule lives in the same tables.
 */
import { execFile } from "node:child_process";
import { FleetError } from "../errors.js";

export const BRIDGE_PREFIX = "fl-";

interface Chain {
  table: "filter" | "nat";
  name: string;
  /** The built-in chain that jumps to it, and where. */
  from: string[];
}

const ISOLATION: Chain = { table: "filter", name: "FLEETLET-ISOLATION", from: ["-I", "FORWARD", "1"] };
const MASQ: Chain = { table: "nat", name: "FLEETLET-MASQ", from: ["-A", "POSTROUTING"] };
const LOCALNET: Chain = { table: "filter", name: "FLEETLET-LOCALNET", from: ["-I", "INPUT", "1"] };
/** One rule for every bridge of ours (`fl-+`): made with the first bridge, and harmless with none. */
const LOCALNET_DROP = [
  ...["-i", `${BRIDGE_PREFIX}+`, "-d", "127.0.0.0/8", "-m", "conntrack", "!"],
  ...["--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"],
];

function iptables(table: string, args: string[]): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile("iptables", ["-w", "-t", table, ...args], (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === "ENOENT")
        reject(new FleetError("E_UNSUPPORTED", "container networks need iptables (Debian: iptables)"));
      else resolve({ ok: !err, stdout, stderr });
    });
  });
}

async function must(table: string, args: string[], what: string): Promise<void> {
  const r = await iptables(table, args);
  if (!r.ok) throw new FleetError("E_RUNTIME", `${what}: iptables -t ${table} ${args.join(" ")}: ${r.stderr.trim()}`);
}

interface BridgeRules {
  /** At the head of FLEETLET-ISOLATION, in this order: what one bridge lets through within itself, then drops. */
  head: string[][];
  /** At its end, below every bridge's drops: what the bridge lets through (a FORWARD policy of DROP stops the rest). */
  tail: string[][];
  masq: string[][];
}

function rulesOf(bridge: string, subnet: string, internal: boolean): BridgeRules {
  const own = ["-i", bridge, "-o", bridge, "-j", "ACCEPT"];
  if (internal) return { head: [own, ["-i", bridge, "-j", "DROP"], ["-o", bridge, "-j", "DROP"]], tail: [], masq: [] };
  return {
    head: [
      own,
      ["-i", bridge, "-o", `${BRIDGE_PREFIX}+`, "-j", "DROP"],
      // Routed in from elsewhere: only a published port (DNAT) or a reply. The bridge plugin turns
      // forwarding on, so a host that routes the subnet through the device reached every port.
      ["-o", bridge, "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"],
    ],
    tail: [
      ["-i", bridge, "-j", "ACCEPT"],
      ["-o", bridge, "-j", "ACCEPT"],
    ],
    masq: [["-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"]],
  };
}

/** Changes to the chains made by this process, one at a time (containers start side by side). */
let queue: Promise<unknown> = Promise.resolve();
function serially<T>(fn: () => Promise<T>): Promise<T> {
  const next = queue.then(fn, fn);
  queue = next.catch(() => undefined); // the caller gets the error; the queue goes on
  return next;
}

/** Adds the bridge's rules (and the chains and their jumps, the first time); adding twice changes nothing. */
export function addBridgeRules(bridge: string, subnet: string, internal: boolean): Promise<void> {
  return serially(() => addRules(bridge, subnet, internal));
}

async function ensureChain(chain: Chain, what: string): Promise<void> {
  const { table, name } = chain;
  // Another process (a second agent on the host) may make the chain at the same moment: either one will do.
  if (!(await iptables(table, ["-S", name])).ok && !(await iptables(table, ["-N", name])).ok)
    await must(table, ["-S", name], what);
  if (!(await iptables(table, ["-C", chain.from[1]!, "-j", name])).ok)
    await must(table, [...chain.from, "-j", name], what);
}

const present = async (chain: Chain, rule: string[]) => (await iptables(chain.table, ["-C", chain.name, ...rule])).ok;

async function addRules(bridge: string, subnet: string, internal: boolean): Promise<void> {
  const what = `firewall rules of bridge ${bridge}`;
  for (const chain of [ISOLATION, MASQ, LOCALNET]) await ensureChain(chain, what);
  if (!(await present(LOCALNET, LOCALNET_DROP))) await must("filter", ["-A", LOCALNET.name, ...LOCALNET_DROP], what);
  const { head, tail, masq } = rulesOf(bridge, subnet, internal);
  // The head goes in whole, in order (a drop above the bridge's own ACCEPT would cut it in two).
  const missing = [];
  for (const rule of head) if (!(await present(ISOLATION, rule))) missing.push(rule);
  if (missing.length > 0) {
    for (const rule of head) if (!missing.includes(rule)) await must("filter", ["-D", ISOLATION.name, ...rule], what);
    for (const rule of [...head].reverse()) await must("filter", ["-I", ISOLATION.name, "1", ...rule], what);
  }
  for (const [chain, rule] of [...tail.map((r) => [ISOLATION, r] as const), ...masq.map((r) => [MASQ, r] as const)])
    if (!(await present(chain, rule))) await must(chain.table, ["-A", chain.name, ...rule], what);
}

/** Removes every rule of ours that names the bridge; nothing to do when there are none. */
export function removeBridgeRules(bridge: string): Promise<void> {
  return serially(async () => {
    for (const chain of [ISOLATION, MASQ]) await removeRules(chain, bridge);
  });
}

async function removeRules(chain: Chain, bridge: string): Promise<void> {
  const listed = await iptables(chain.table, ["-S", chain.name]);
  if (!listed.ok) return; // no chain: no rule of ours is left
  for (const line of listed.stdout.split("\n")) {
    const args = line.trim().split(/\s+/);
    const names = args.filter((_, i) => args[i - 1] === "-i" || args[i - 1] === "-o");
    if (args[0] !== "-A" || !names.includes(bridge)) continue;
    await must(chain.table, ["-D", ...args.slice(1)], `remove the firewall rules of bridge ${bridge}`);
  }
}
