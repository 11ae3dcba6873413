/**
 * The services running on this device: their containers (created from the
 * service spec and the image's defaults), the supervisors that watch them
 * and restart them by policy, and their records in db.json. The Agent
 * decides what should run; this carries it out one container at a time.
 */
import type { ServiceSpec } from "../../schemas/desired.js";
import type { ServiceReport } from "../../schemas/reported.js";
import { FleetError } from "../errors.js";
import { imageDefaults } from "../store/image-defaults.js";
import type { ImageRecord } from "../store/image-store.js";
import type { AgentStore } from "./agent.js";
import type { ContainerDriver } from "./container-driver.js";
import type { ActualService } from "./plan.js";
import { serviceContainerSpec } from "./service-container.js";
import { ServiceSupervisor } from "./service-supervisor.js";

export interface DeviceServicesDeps {
  runtime: ContainerDriver;
  store: AgentStore;
  pull(ref: string, signal: AbortSignal): Promise<ImageRecord>;
  event(e: { type: string; [k: string]: unknown }): void;
  changed(): void;
}

export class DeviceServices {
  private readonly supervisors = new Map<string, ServiceSupervisor>();

  constructor(private readonly deps: DeviceServicesDeps) {}

  private get db() {
    return this.deps.store.db;
  }

  private event(e: { type: string; [k: string]: unknown }): void {
    this.deps.event(e);
  }

  private changed(): void {
    this.deps.changed();
  }

  actualServices(): Map<string, ActualService> {
    const out = new Map<string, ActualService>();
    for (const [name, rec] of Object.entries(this.db.data.services)) {
      const sup = this.supervisors.get(name);
      const running = sup?.containerId === rec.containerId && sup.state !== "exited" && sup.state !== "failed";
      out.set(name, {
        name,
        containerId: rec.containerId,
        hash: rec.hash,
        running,
        stopTimeoutMs: rec.spec.stopTimeoutMs,
        stopSignal: rec.spec.stopSignal,
      });
    }
    return out;
  }

  unhealthyReason(service: string): string | undefined {
    const sup = this.supervisors.get(service);
    if (!sup) return "not started";
    if (sup.isHealthy()) return undefined;
    if (sup.state !== "running")
      return sup.lastExit
        ? `${sup.state}, last exit ${sup.lastExit.exitCode}${sup.lastExit.oomKilled ? " (out of memory)" : ""}`
        : sup.state;
    return sup.health === "unhealthy" ? "healthcheck failing" : "starting";
  }

  async startService(
    service: string,
    spec: ServiceSpec,
    hash: string,
    containerId: string,
    image: ImageRecord,
    deployment: string,
    failures: number,
  ): Promise<void> {
    const { runtime } = this.deps;
    try {
      await runtime.delete(containerId, { force: true }); // a leftover of a crash mid-start
    } catch (err) {
      if ((err as FleetError).code !== "E_NOT_FOUND") throw err;
    }
    const cspec = serviceContainerSpec(service, spec, imageDefaults(this.deps.store, image), {
      containerId,
      hash,
      deployment,
    });
    runtime.create(cspec);
    const previous = this.db.data.services[service];
    this.db.data.services[service] = {
      containerId,
      hash,
      image: spec.image,
      digest: image.digest,
      restarts: previous?.containerId === containerId || failures > 0 ? (previous?.restarts ?? 0) : 0,
      deployment,
      spec,
    };
    await this.db.write();
    await runtime.start(containerId);
    this.supervise(service, containerId, spec, failures);
  }

  supervise(service: string, containerId: string, spec: ServiceSpec, failures: number): void {
    this.supervisors.get(service)?.detach();
    const sup = new ServiceSupervisor(
      service,
      containerId,
      spec,
      this.deps.runtime,
      { event: (e) => this.event(e), changed: () => this.changed(), restart: (s, f) => this.recreate(s, f) },
      failures,
    );
    this.supervisors.set(service, sup);
    sup.start();
  }

  /** Restarts a service by its policy: a fresh container of the same spec. */
  async recreate(service: string, failures: number): Promise<void> {
    const rec = this.db.data.services[service];
    if (!rec) return;
    const image =
      this.deps.store.images.get(rec.image) ?? (await this.deps.pull(rec.image, new AbortController().signal));
    rec.restarts++;
    await this.startService(service, rec.spec, rec.hash, rec.containerId, image, rec.deployment, failures);
    this.db.data.services[service]!.restarts = rec.restarts;
    await this.db.write();
  }

  /** POST /v1/services/<name>/restart. */
  async restartService(service: string): Promise<void> {
    const rec = this.db.data.services[service];
    if (!rec) throw new FleetError("E_NOT_FOUND", `no service named ${service}`);
    this.supervisors.get(service)?.detach();
    try {
      await this.deps.runtime.stop(rec.containerId, { timeoutMs: rec.spec.stopTimeoutMs, signal: rec.spec.stopSignal });
    } catch (err) {
      if ((err as FleetError).code !== "E_CONFLICT") throw err; // already stopped: recreate it all the same
    }
    await this.recreate(service, 0);
  }

  async stopContainer(service: string, containerId: string, timeoutMs: number, signal: string): Promise<void> {
    const sup = this.supervisors.get(service);
    if (sup?.containerId === containerId) sup.detach();
    try {
      if (this.deps.runtime.inspect(containerId).status === "running")
        await this.deps.runtime.stop(containerId, { timeoutMs, signal });
    } catch (err) {
      if ((err as FleetError).code !== "E_NOT_FOUND") throw err;
    }
    this.event({ type: "stopped", service, container: containerId });
  }

  async removeContainer(service: string, containerId: string): Promise<void> {
    try {
      await this.deps.runtime.delete(containerId, { force: true });
    } catch (err) {
      if ((err as FleetError).code !== "E_NOT_FOUND") throw err;
    }
    if (this.db.data.services[service]?.containerId === containerId) {
      delete this.db.data.services[service];
      this.supervisors.get(service)?.detach();
      this.supervisors.delete(service);
      await this.db.write();
    }
  }

  logs(service: string, tail?: number): string {
    const rec = this.db.data.services[service];
    if (!rec) throw new FleetError("E_NOT_FOUND", `no service named ${service}`);
    return this.deps.runtime.logs(rec.containerId, tail === undefined ? {} : { tail });
  }

  /** Each service as the reported document shows it. */
  reports(): Record<string, ServiceReport> {
    const services: Record<string, ServiceReport> = {};
    for (const [name, rec] of Object.entries(this.db.data.services)) {
      const sup = this.supervisors.get(name);
      let pid: number | undefined;
      let stats = { memoryBytes: 0, cpuNanos: 0 };
      try {
        const info = this.deps.runtime.inspect(rec.containerId);
        pid = info.status === "running" ? info.pid : undefined;
        if (info.status === "running") stats = this.deps.runtime.stats(rec.containerId);
      } catch (err) {
        if ((err as FleetError).code !== "E_NOT_FOUND") throw err;
      }
      services[name] = {
        image: rec.image,
        digest: rec.digest,
        state: sup?.state ?? "stopped",
        ...(pid ? { pid } : {}),
        restarts: rec.restarts,
        health: sup?.health ?? "none",
        memoryBytes: stats.memoryBytes,
        cpuSeconds: stats.cpuNanos / 1e9,
        ...(sup?.lastExit ? { exitCode: sup.lastExit.exitCode } : {}),
        ...(sup ? { startedAt: new Date(sup.startedAt).toISOString() } : {}),
      };
    }
    return services;
  }

  /** Stops watching; the containers keep running. */
  detachAll(): void {
    for (const sup of this.supervisors.values()) sup.detach();
  }
}
