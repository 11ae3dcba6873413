/** A service of the desired state, made into a container spec on top of its image's defaults. */
import type { ContainerSpecInput } from "../../schemas/container.js";
import type { NetworkRecord } from "../../schemas/db.js";
import type { ServiceSpec } from "../../schemas/desired.js";
import { parsePort } from "../../schemas/network.js";
import { FleetError } from "../errors.js";
import { resolveGroups, resolveUser } from "../runtime/user-lookup.js";
import { type ImageDefaults, mergeEnv } from "../store/image-defaults.js";

export function serviceContainerSpec(
  service: string,
  spec: ServiceSpec,
  image: ImageDefaults,
  opts: {
    containerId: string;
    hash: string;
    deployment: string;
    networks?: NetworkRecord[];
    /** Its peers' addresses as known now, for its /etc/hosts at start. */
    peers?: { address: string; names: string[] }[];
  },
): ContainerSpecInput {
  const entrypoint = spec.entrypoint ?? image.entrypoint;
  const command = [...entrypoint, ...(spec.command ?? (spec.entrypoint ? [] : image.cmd))];
  if (command.length === 0)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `services.${service}: image ${image.ref} has no Entrypoint or Cmd, and the service gives no command`,
    );
  const user = spec.user ?? image.user;
  const resolved = user ? resolveUser(user, image.layers, `services.${service}.user`) : { uid: 0, gid: 0, groups: [] };
  const groupAdd = resolveGroups(spec.groupAdd, image.layers, `services.${service}.groupAdd`);
  return {
    name: opts.containerId,
    layers: image.layers,
    command,
    env: mergeEnv(
      image.env,
      Object.entries(spec.env).map(([k, v]) => `${k}=${v}`),
    ),
    workingDir: spec.workingDir ?? image.workingDir ?? "/",
    user: { ...resolved, groups: [...resolved.groups, ...groupAdd] },
    // A service name may hold '_', a host name not; its peers know it by its name (an alias) all the same.
    hostname: spec.hostname ?? service.replaceAll("_", "-"),
    resources: { memory: spec.resources.memory, cpus: spec.resources.cpus, pids: spec.resources.pids },
    ...containerNetwork(service, spec, opts.networks ?? [], opts.peers ?? []),
    readOnlyRootfs: spec.readOnlyRootfs,
    init: spec.init,
    volumes: spec.volumes,
    devices: spec.devices,
    stopSignal: spec.stopSignal,
    stopTimeoutMs: spec.stopTimeoutMs,
    labels: {
      "fleetlet.service": service,
      "fleetlet.hash": opts.hash,
      "fleetlet.deployment": opts.deployment,
      "fleetlet.image": image.ref,
    },
  };
}

/** How the container joins its networks: the bridges, the ports published, the name its peers know it by. */
function containerNetwork(
  service: string,
  spec: ServiceSpec,
  networks: NetworkRecord[],
  peers: { address: string; names: string[] }[],
): Partial<ContainerSpecInput> {
  if (networks.length === 0) return { network: spec.network };
  return {
    network: "bridge",
    attachments: networks.map((n) => ({
      network: n.name,
      bridge: n.bridge,
      subnet: n.subnet,
      internal: n.spec.internal,
    })),
    ports: spec.ports.map((p) => parsePort(p)!),
    aliases: [service],
    extraHosts: peers,
  };
}
