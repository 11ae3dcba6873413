/** One service as the reported document shows it (its record, its supervisor's view, its container's figures), and why it is not healthy. */
import type { ServiceRecord } from "../../schemas/db.js";
import type { DevicePresence } from "../../schemas/device.js";
import type { ServiceReport } from "../../schemas/reported.js";
import type { FleetError } from "../errors.js";
import type { ContainerDriver } from "./container-driver.js";
import type { ServiceSupervisor } from "./service-supervisor.js";

export interface ServiceView {
  runtime: ContainerDriver;
  supervisor: ServiceSupervisor | undefined;
  /** The absent device paths the service waits for, if it waits. */
  waitingFor: string[] | undefined;
  devices: DevicePresence[] | undefined;
}

export function serviceReport(rec: ServiceRecord, view: ServiceView): ServiceReport {
  const sup = view.supervisor;
  let pid: number | undefined;
  let stats = { memoryBytes: 0, cpuNanos: 0 };
  try {
    const info = view.runtime.inspect(rec.containerId);
    pid = info.status === "running" ? info.pid : undefined;
    if (info.status === "running") stats = view.runtime.stats(rec.containerId);
  } catch (err) {
    if ((err as FleetError).code !== "E_NOT_FOUND") throw err;
  }
  const { waitingFor, devices } = view;
  return {
    image: rec.image,
    digest: rec.digest,
    state: waitingFor ? "waitingForDevice" : (sup?.state ?? "stopped"),
    ...(waitingFor ? { waitingFor } : {}),
    ...(devices ? { devices } : {}),
    ...(pid ? { pid } : {}),
    restarts: rec.restarts,
    health: sup?.health ?? "none",
    memoryBytes: stats.memoryBytes,
    cpuSeconds: stats.cpuNanos / 1e9,
    ...(sup?.lastExit ? { exitCode: sup.lastExit.exitCode } : {}),
    ...(sup ? { startedAt: new Date(sup.startedAt).toISOString() } : {}),
  };
}

/** Why a service is not healthy, in a few words; undefined when it is. */
export function unhealthyReason(
  waitingFor: string[] | undefined,
  sup: ServiceSupervisor | undefined,
): string | undefined {
  if (waitingFor) return `waiting for device ${waitingFor.join(", ")}, absent`;
  if (!sup) return "not started";
  if (sup.isHealthy()) return undefined;
  if (sup.state !== "running") {
    const oom = sup.lastExit?.oomKilled ? " (out of memory)" : "";
    return sup.lastExit ? `${sup.state}, last exit ${sup.lastExit.exitCode}${oom}` : sup.state;
  }
  return sup.health === "unhealthy" ? "healthcheck failing" : "starting";
}
