/**
 * Container networks over the CNI plugins, driven as a CNI runtime. A
 * container on bridges gets, under `<root>/network/<id>/`: its network
 * namespace, pinned (`ns`) before the container starts so its links are up
 * before its command runs; `intent.json`, written before the first ADD and
 * updated with each result, so anything a crash interrupts is taken down
 * (DEL is idempotent) by `detach` or the next `sweep`; and the `hosts` and
 * `resolv.conf` bind-mounted into it. host-local keeps its leases in
 * `<root>/network/ipam/<bridge>/`.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Attachment, ContainerSpec } from "../../schemas/container.js";
import type { HostNetworkFacts } from "../../schemas/network.js";
import { FleetError, isErrno } from "../errors.js";
import { privateDir } from "../system/state-root.js";
import { bridgeMac, closeIpv6 } from "./bridge-link.js";
import { addBridgeRules, BRIDGE_PREFIX, removeBridgeRules } from "./bridge-rules.js";
import { checkResult, outwardAttachment, pluginChain, resultAddress } from "./cni-config.js";
import { type CniCommand, runCniPlugin } from "./cni-plugin.js";
import { writeFileAtomic } from "./container-dir.js";
import { hasLegacyNatTable, parseForwardedPorts, readHostNetwork } from "./host-network.js";
import { type HostsEntry, hostResolvConf, hostsContent, rewriteInPlace } from "./hosts-file.js";
import { pinned } from "./netns-pin.js";

export const DEFAULT_CNI_PATH = "/usr/lib/cni";

interface Intent {
  attachments: Attachment[];
  ports: ContainerSpec["ports"];
  names: string[];
  /** The bridge plugin's result per attachment index, once its ADD succeeded. */
  results: Record<string, Record<string, unknown>>;
}

/** What a container's shim config needs: the pinned namespace and the files to bind. */
export interface JoinedNetwork {
  netns: string;
  hosts: string;
  resolvConf: string;
}

export interface ContainerNetworkOptions {
  root: string;
  shimPath: string;
  pluginDir?: string;
  /**
   * The container's running init, if it runs: its namespace is pinned again
   * when the pin is not there. A pin is a bind mount, and an agent that
   * systemd starts again gets a mount namespace of its own (the unit's
   * ProtectSystem and PrivateTmp), without the previous agent's mounts.
   */
  liveInit?: (id: string) => { pid: number; startTime: string } | undefined;
}

function run(file: string, args: string[]): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  return new Promise((done) =>
    execFile(file, args, (err, stdout, stderr) => done({ ok: !err, stdout, stderr: stderr.trim() })),
  );
}

export class ContainerNetwork {
  private readonly root: string;
  private readonly pluginDir: string;
  /** Bridges this process has made the firewall rules of: they are checked once per bridge, not at every start. */
  private readonly isolated = new Set<string>();

  constructor(private readonly opts: ContainerNetworkOptions) {
    this.root = join(opts.root, "network");
    this.pluginDir = opts.pluginDir ?? DEFAULT_CNI_PATH;
  }

  private dir(id: string): string {
    return join(this.root, id);
  }

  private ipamDir(): string {
    return join(this.root, "ipam");
  }

  /** The host's routes, and its ports bound or forwarded (by any DNAT rule: ours too, which the planner tells apart). */
  async hostNetwork(): Promise<HostNetworkFacts> {
    const nat = await run("iptables", ["-w", "-t", "nat", "-S"]);
    // Without iptables (or its nat table) nothing is forwarded: there is nothing to read.
    const rules = [nat.ok ? nat.stdout : ""];
    if (hasLegacyNatTable()) {
      const legacy = await run("iptables-legacy", ["-w", "-t", "nat", "-S"]);
      if (legacy.ok) rules.push(legacy.stdout);
    }
    return readHostNetwork(parseForwardedPorts(rules.join("\n")));
  }

  /** `fl-` and 12 hex digits of the state root, network and subnet: two agents on a host never share a bridge. */
  bridgeName(network: string, subnet: string): string {
    const h = createHash("sha256")
      .update(`${resolve(this.opts.root)}\0${network}\0${subnet}`)
      .digest("hex");
    return `${BRIDGE_PREFIX}${h.slice(0, 12)}`;
  }

  private readIntent(id: string): Intent | undefined {
    try {
      return JSON.parse(readFileSync(join(this.dir(id), "intent.json"), "utf8")) as Intent;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return undefined;
      throw err;
    }
  }

  private writeIntent(id: string, intent: Intent): void {
    writeFileAtomic(join(this.dir(id), "intent.json"), JSON.stringify(intent));
  }

  private async chain(id: string, intent: Intent, index: number, command: CniCommand) {
    const attachment = intent.attachments[index]!;
    const out = outwardAttachment(intent);
    const chain = pluginChain({
      attachment,
      ports: index === out ? intent.ports : [],
      defaultRoute: index === out,
      ipamDir: this.ipamDir(),
    });
    const ns = join(this.dir(id), "ns");
    const netns = pinned(ns) || (await this.repin(id, ns)) ? ns : "";
    const what = `container ${id}: network ${attachment.network}`;
    const call = { pluginDir: this.pluginDir, containerId: id, netns, ifname: `eth${index}`, what, command };
    if (command !== "ADD") {
      // DEL and CHECK get the chain's result as prevResult: DEL in reverse order, CHECK in order.
      const recorded = intent.results[index];
      if (command === "CHECK" && !recorded) throw new FleetError("E_RUNTIME", `${what}: no ADD result recorded`);
      const prevResult =
        recorded && command === "CHECK"
          ? checkResult(recorded, attachment.bridge, await bridgeMac(attachment.bridge))
          : recorded;
      // portmap 1.1.1's CHECK looks for an IPv6 DNAT chain even for a container without IPv6, and
      // fails: only bridge (with host-local) is asked.
      const order = command === "DEL" ? chain.reverse() : chain.filter((p) => p.type !== "portmap");
      for (const plugin of order)
        await runCniPlugin({
          ...call,
          plugin: plugin.type as string,
          config: { ...plugin, ...(prevResult ? { prevResult } : {}) },
        });
      return undefined;
    }
    let prevResult: Record<string, unknown> | undefined;
    for (const plugin of chain) {
      const config = { ...plugin, ...(prevResult ? { prevResult } : {}) };
      prevResult = await runCniPlugin({ ...call, plugin: plugin.type as string, config });
    }
    return prevResult;
  }

  /**
   * Pins the container's namespace and joins it to each network (eth0, eth1,
   * …), then writes its name files. On failure, everything done is undone.
   */
  async attach(id: string, spec: ContainerSpec): Promise<JoinedNetwork> {
    const dir = this.dir(id);
    privateDir(this.root);
    privateDir(dir);
    const names = [...new Set([spec.hostname ?? id.slice(0, 63), ...spec.aliases])];
    const intent: Intent = { attachments: spec.attachments, ports: spec.ports, names, results: {} };
    this.writeIntent(id, intent);
    try {
      const pinned = await run(this.opts.shimPath, ["netns", "add", join(dir, "ns")]);
      if (!pinned.ok) throw new FleetError("E_RUNTIME", `container ${id}: ${pinned.stderr}`);
      for (const [i, a] of spec.attachments.entries()) {
        if (!this.isolated.has(a.bridge)) await addBridgeRules(a.bridge, a.subnet, a.internal);
        this.isolated.add(a.bridge);
        intent.results[i] = (await this.chain(id, intent, i, "ADD"))!;
        this.writeIntent(id, intent);
        closeIpv6(a.bridge); // once the plugin has made the bridge
      }
      // The peers known now are there before the command runs; the agent rewrites the file as they change.
      rewriteInPlace(join(dir, "hosts"), hostsContent(selfEntries(intent), spec.extraHosts));
      rewriteInPlace(join(dir, "resolv.conf"), hostResolvConf());
    } catch (err) {
      await this.detach(id).catch((cleanup: Error) => {
        throw new FleetError("E_RUNTIME", `${(err as Error).message}; then, undoing it: ${cleanup.message}`);
      });
      throw err;
    }
    return { netns: join(dir, "ns"), hosts: join(dir, "hosts"), resolvConf: join(dir, "resolv.conf") };
  }

  /** Takes the container off its networks and unpins its namespace; nothing to do when it has none. */
  async detach(id: string): Promise<void> {
    const intent = this.readIntent(id);
    if (intent) {
      for (let i = intent.attachments.length - 1; i >= 0; i--) await this.chain(id, intent, i, "DEL");
    }
    const unpinned = await run(this.opts.shimPath, ["netns", "del", join(this.dir(id), "ns")]);
    if (!unpinned.ok) throw new FleetError("E_RUNTIME", `container ${id}: ${unpinned.stderr}`);
    rmSync(this.dir(id), { recursive: true, force: true });
  }

  /** Pins the running container's namespace again where its pin is not mounted (see liveInit); false when it does not run. */
  private async repin(id: string, ns: string): Promise<boolean> {
    const init = this.opts.liveInit?.(id);
    if (!init || !existsSync(ns)) return false;
    const r = await run(this.opts.shimPath, ["netns", "pin", String(init.pid), init.startTime, ns]);
    if (!r.ok) throw new FleetError("E_RUNTIME", `container ${id}: ${r.stderr}`);
    return true;
  }

  /** Asks the plugins whether the container's networking is as they set it up (CNI CHECK); throws what is wrong. */
  async check(id: string): Promise<void> {
    const intent = this.readIntent(id);
    if (!intent) throw new FleetError("E_RUNTIME", `container ${id}: no network set up`);
    for (let i = 0; i < intent.attachments.length; i++) await this.chain(id, intent, i, "CHECK");
    // The bridges' rules too (a firewall reload, or an older agent's, while no agent ran): once per process.
    for (const a of intent.attachments) await this.isolate(a);
  }

  private async isolate(a: Attachment): Promise<void> {
    if (!this.isolated.has(a.bridge)) await addBridgeRules(a.bridge, a.subnet, a.internal);
    this.isolated.add(a.bridge);
    closeIpv6(a.bridge);
  }

  /**
   * From one read of its intent: the container's address on each network it
   * joined, by network name, and a rewrite in place of its /etc/hosts
   * (itself, then the peers given; nothing for a container on no network).
   */
  peerFile(id: string): { addresses: Record<string, string>; write(peers: HostsEntry[]): void } {
    const intent = this.readIntent(id);
    const addresses: Record<string, string> = {};
    for (const [i, a] of intent?.attachments.entries() ?? []) {
      const address = intent?.results[i] && resultAddress(intent.results[i]);
      if (address) addresses[a.network] = address;
    }
    const hosts = join(this.dir(id), "hosts");
    return { addresses, write: (peers) => intent && rewriteInPlace(hosts, hostsContent(selfEntries(intent), peers)) };
  }

  /** Takes down what a container that no longer exists left (a crash mid-start or mid-removal). */
  async sweep(): Promise<void> {
    const exists = (id: string) => existsSync(join(this.opts.root, "containers", id));
    let names: string[];
    try {
      names = readdirSync(this.root);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return;
      throw err;
    }
    for (const id of names) if (id !== "ipam" && !exists(id)) await this.detach(id);
  }

  /** Deletes a network's bridge, its isolation rules and host-local's leases; nothing to do when they are gone. */
  async removeNetwork(network: { bridge: string }): Promise<void> {
    const del = await run("ip", ["link", "del", network.bridge]);
    if (!del.ok && !/Cannot find device|does not exist/.test(del.stderr))
      throw new FleetError("E_RUNTIME", `remove bridge ${network.bridge}: ${del.stderr}`);
    await removeBridgeRules(network.bridge);
    this.isolated.delete(network.bridge);
    rmSync(join(this.ipamDir(), network.bridge), { recursive: true, force: true });
  }
}

/** The container's own lines: each address it has, with its names. */
function selfEntries(intent: Intent): HostsEntry[] {
  return Object.values(intent.results).flatMap((r) => {
    const address = resultAddress(r);
    return address ? [{ address, names: intent.names }] : [];
  });
}
