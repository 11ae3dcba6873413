/** A service of the desired state, made into a container spec on top of its image's defaults. */
import type { ContainerSpecInput } from "../../schemas/container.js";
import type { ServiceSpec } from "../../schemas/desired.js";
import { FleetError } from "../errors.js";
import { resolveGroups, resolveUser } from "../runtime/user-lookup.js";
import { type ImageDefaults, mergeEnv } from "../store/image-defaults.js";

export function serviceContainerSpec(
  service: string,
  spec: ServiceSpec,
  image: ImageDefaults,
  opts: { containerId: string; hash: string; deployment: string },
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
    hostname: spec.hostname ?? service,
    resources: { memory: spec.resources.memory, cpus: spec.resources.cpus, pids: spec.resources.pids },
    network: spec.network,
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
