/**
 * Keeps each container network to itself: one iptables chain, jumped to
 * first from FORWARD, drops what one of our bridges (all named `fl-…`) would
 * route to another, and for an internal network everything routed in or out.
 * The CNI plugins use iptables too (this host's is the nf_tables variant), so
 * every rule lives in the same tables.
 */
import { execFile } from "node:child_process";
import { FleetError } from "../errors.js";

const CHAIN = "FLEETLET-ISOLATION";
export const BRIDGE_PREFIX = "fl-";

function iptables(args: string[]): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile("iptables", ["-w", ...args], (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === "ENOENT")
        reject(new FleetError("E_UNSUPPORTED", "container networks need iptables (Debian: iptables)"));
      else resolve({ ok: !err, stdout, stderr });
    });
  });
}

async function must(args: string[], what: string): Promise<void> {
  const r = await iptables(args);
  if (!r.ok) throw new FleetError("E_RUNTIME", `${what}: iptables ${args.join(" ")}: ${r.stderr.trim()}`);
}

function rulesOf(bridge: string, internal: boolean): string[][] {
  const own = ["-i", bridge, "-o", bridge, "-j", "RETURN"];
  if (internal) return [own, ["-i", bridge, "-j", "DROP"], ["-o", bridge, "-j", "DROP"]];
  return [own, ["-i", bridge, "-o", `${BRIDGE_PREFIX}+`, "-j", "DROP"]];
}

/** Changes to the chain made by this process, one at a time (containers start side by side). */
let queue: Promise<unknown> = Promise.resolve();
function serially<T>(fn: () => Promise<T>): Promise<T> {
  const next = queue.then(fn, fn);
  queue = next.catch(() => undefined); // the caller gets the error; the queue goes on
  return next;
}

/** Adds the bridge's rules (and the chain and its jump, the first time); adding twice changes nothing. */
export function isolateBridge(bridge: string, internal: boolean): Promise<void> {
  return serially(() => addRules(bridge, internal));
}

async function addRules(bridge: string, internal: boolean): Promise<void> {
  const what = `isolate bridge ${bridge}`;
  // Another process (a second agent on the host) may make the chain at the same moment: either one will do.
  if (!(await iptables(["-S", CHAIN])).ok && !(await iptables(["-N", CHAIN])).ok) await must(["-S", CHAIN], what);
  if (!(await iptables(["-C", "FORWARD", "-j", CHAIN])).ok) await must(["-I", "FORWARD", "1", "-j", CHAIN], what);
  for (const rule of rulesOf(bridge, internal))
    if (!(await iptables(["-C", CHAIN, ...rule])).ok) await must(["-A", CHAIN, ...rule], what);
}

/** Removes every rule that names the bridge; nothing to do when there are none. */
export function releaseBridge(bridge: string): Promise<void> {
  return serially(() => removeRules(bridge));
}

async function removeRules(bridge: string): Promise<void> {
  const listed = await iptables(["-S", CHAIN]);
  if (!listed.ok) return; // no chain: no rule of ours is left
  for (const line of listed.stdout.split("\n")) {
    const args = line.trim().split(/\s+/);
    if (args[0] !== "-A" || !(args.includes(bridge) && (args.includes("-i") || args.includes("-o")))) continue;
    const names = args.filter((_, i) => args[i - 1] === "-i" || args[i - 1] === "-o");
    if (!names.includes(bridge)) continue;
    await must(["-D", ...args.slice(1)], `release bridge ${bridge}`);
  }
}
