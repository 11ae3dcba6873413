/**
 * A container's host devices: resolved to their nodes when it starts (the
 * shim makes each node in the container's /dev and the device cgroup allows
 * it), and again whenever the device may have come or gone, so a running
 * container follows a device that is unplugged and plugged back.
 */
import type { DeviceNode, DeviceRequest } from "../../schemas/device.js";
import { FleetError } from "../errors.js";
import { resolveDevice } from "./device-nodes.js";

/** Thrown when a device is absent at start: the agent waits for it (E_DEVICE_ABSENT), `fleetlet run` fails. */
export function absentError(id: string, paths: string[], devRoot: string): FleetError {
  const where = devRoot === "/dev" ? "" : ` (device root ${devRoot})`;
  return new FleetError("E_DEVICE_ABSENT", `container ${id}: device ${paths.join(", ")} is absent${where}`, {
    exitCode: 125,
  });
}

export class ContainerDevices {
  constructor(readonly devRoot: string) {}

  /** Each request's node now, or undefined where the device is absent. */
  resolve(requests: readonly DeviceRequest[]): (DeviceNode | undefined)[] {
    return requests.map((r) => resolveDevice(this.devRoot, r));
  }

  /** The nodes a container starts with; E_DEVICE_ABSENT naming every device that is not there. */
  forStart(id: string, requests: readonly DeviceRequest[]): DeviceNode[] {
    const nodes = this.resolve(requests);
    const absent = requests.filter((_, i) => nodes[i] === undefined).map((r) => r.path);
    if (absent.length > 0) throw absentError(id, absent, this.devRoot);
    return nodes as DeviceNode[];
  }
}
