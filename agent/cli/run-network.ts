/**
 * `fleetlet run --network NAME [-p PORT]…`: a container joins a network of
 * the deployment the device runs, by its name in the document, with the
 * services on it in its /etc/hosts, and may publish ports from it: a port
 * the host has bound, or that a firewall rule forwards already, is refused.
 */
import type { ContainerSpecInput } from "../../schemas/container.js";
import { parsePort } from "../../schemas/network.js";
import { FleetError } from "../errors.js";
import { portHolder, portInUse } from "../reconcile/network-plan.js";
import type { ParsedArgs } from "./args.js";
import type { CliContext } from "./context.js";

const usage = (msg: string) => new FleetError("E_INVALID_ARGUMENT", msg, { exitCode: 125 });

/** The spec's network fields for `--network NAME`; undefined for none, host or no --network. */
export async function runNetwork(
  ctx: CliContext,
  o: ParsedArgs["options"],
): Promise<Partial<ContainerSpecInput> | undefined> {
  const name = o.network as string | undefined;
  const publish = (o.publish as string[] | undefined) ?? [];
  if (name === undefined || name === "none" || name === "host") {
    if (publish.length > 0) throw usage("--publish: give --network NAME too: ports are published from a network");
    return undefined;
  }
  const db = (await ctx.store()).db;
  const records = Object.values(db.data.networks ?? {}).filter((r) => r.name === name);
  // A network whose definition changed may be recorded twice until the old one is pruned: the one in use wins.
  const inUse = new Set(Object.values(db.data.services).flatMap((s) => (s.networks ?? []).map((n) => n.bridge)));
  const rec = records.find((r) => inUse.has(r.bridge)) ?? records[0];
  if (!rec) {
    const known = [...new Set(Object.values(db.data.networks ?? {}).map((r) => r.name))].join(", ") || "none";
    throw new FleetError("E_NOT_FOUND", `--network ${name}: no network of that name on this device (known: ${known})`, {
      exitCode: 125,
    });
  }
  const ports = publish.map((p) => {
    const port = parsePort(p);
    if (!port) throw usage(`--publish: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], got "${p}"`);
    return port;
  });
  if (rec.spec.internal && ports.length > 0)
    throw usage(`--publish: network ${name} is internal: nothing is published from it`);
  if (ports.length > 0) {
    // As for a service's ports: a port the host has bound, or that a rule forwards (the services' own too), is refused.
    const host = await ctx.runtime.network.hostNetwork();
    ports.forEach((p, i) => {
      const busy = portHolder(p, host, []);
      if (busy)
        throw new FleetError("E_PORT_IN_USE", `--publish ${publish[i]}: ${portInUse(p, busy)}`, { exitCode: 125 });
    });
  }
  const peers = Object.entries(db.data.services).flatMap(([service, s]) => {
    const address = s.addresses?.[name];
    return address ? [{ address, names: [service] }] : [];
  });
  const attachment = { network: rec.name, bridge: rec.bridge, subnet: rec.subnet, internal: rec.spec.internal };
  return { network: "bridge", attachments: [attachment], ports, extraHosts: peers };
}
