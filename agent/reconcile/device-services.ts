/**
 * The services running on this device: their containers (created from the
 * service spec and the image's defaults), the supervisors that watch them
 * and restart them by policy, and their records in db.json. The Agent
 * decides what should run; this carries it out one container at a time.
 */
import type { NetworkRecord } from "../../schemas/db.js";
import type { ServiceSpec } from "../../schemas/desired.js";
import type { ServiceReport } from "../../schemas/reported.js";
import { FleetError } from "../errors.js";
import { imageDefaults } from "../store/image-defaults.js";
import type { ImageRecord } from "../store/image-store.js";
import { imageContent } from "../store/local-store.js";
import type { AgentStore, PullImage } from "./agent-store.js";
import type { ContainerDriver } from "./container-driver.js";
import { DeviceNetworks } from "./device-networks.js";
import type { ActualService, ActualState } from "./plan.js";
import { type DevicePolicy, withDefaultLimits } from "./policy.js";
import { shouldRestart } from "./restart-policy.js";
import { serviceContainerSpec } from "./service-container.js";
import { type DeviceWatcher, ServiceDevices } from "./service-devices.js";
import { serviceReport, unhealthyReason } from "./service-report.js";
import { ServiceSupervisor } from "./service-supervisor.js";

export interface DeviceServicesDeps {
  runtime: ContainerDriver;
  store: AgentStore;
  pull: PullImage;
  event(e: { type: string; [k: string]: unknown }): void;
  changed(): void;
  /** The device policy's limits for a service that sets none, applied to each container made. */
  defaultLimits: DevicePolicy["defaults"];
  /** Says when host devices come and go: services wait for theirs and follow them (service-devices.ts). */
  deviceWatch?: DeviceWatcher;
}

export interface ServiceStart {
  service: string;
  spec: ServiceSpec;
  hash: string;
  containerId: string;
  image: ImageRecord;
  deployment: string;
  /** Consecutive failed runs before this start, for the restart backoff. */
  failures: number;
  /** The networks it joins, placed, in the service's order. */
  networks?: NetworkRecord[];
}

const isNotFound = (err: unknown) => (err as FleetError).code === "E_NOT_FOUND";

export class DeviceServices {
  private readonly supervisors = new Map<string, ServiceSupervisor>();
  private readonly devices: ServiceDevices;
  /** The container networks the services join, where the runtime has them. */
  readonly networks: DeviceNetworks | undefined;

  constructor(private readonly deps: DeviceServicesDeps) {
    this.devices = new ServiceDevices(deps);
    const driver = deps.runtime.network;
    this.networks = driver ? new DeviceNetworks(deps.store.db, driver) : undefined;
  }

  private get db() {
    return this.deps.store.db;
  }

  private stateOf(name: string, containerId: string): ActualState {
    if (this.devices.waitingFor(name, containerId)) return "waitingForDevice";
    const sup = this.supervisors.get(name);
    if (sup?.containerId === containerId) return sup.state;
    try {
      this.deps.runtime.inspect(containerId);
    } catch (err) {
      if (isNotFound(err)) return "missing";
      throw err;
    }
    return "failed"; // a container of ours that nothing supervises: not to be relied on
  }

  actualServices(): Map<string, ActualService> {
    const out = new Map<string, ActualService>();
    for (const [name, rec] of Object.entries(this.db.data.services)) {
      const { containerId, hash, spec } = rec;
      const state = this.stateOf(name, containerId);
      out.set(name, { name, containerId, hash, state, stopTimeoutMs: spec.stopTimeoutMs, stopSignal: spec.stopSignal });
    }
    return out;
  }

  unhealthyReason(service: string): string | undefined {
    return unhealthyReason(this.devices.waitingFor(service), this.supervisors.get(service));
  }

  async startService(s: ServiceStart): Promise<void> {
    const { runtime } = this.deps;
    try {
      await runtime.delete(s.containerId, { force: true }); // a leftover of a crash mid-start
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const defaults = imageDefaults(this.deps.store, s.image);
    const networks = s.networks ?? [];
    const peers = this.networks?.peersOf(s.service, networks) ?? [];
    const ids = { containerId: s.containerId, hash: s.hash, deployment: s.deployment, networks, peers };
    const spec = withDefaultLimits(s.spec, this.deps.defaultLimits);
    runtime.create(serviceContainerSpec(s.service, spec, defaults, ids));
    const hadAddress = this.db.data.services[s.service]?.addresses !== undefined;
    await this.db.update((d) => {
      const previous = d.services[s.service];
      const sameRun = previous?.containerId === s.containerId || s.failures > 0;
      d.services[s.service] = {
        containerId: s.containerId,
        hash: s.hash,
        image: s.spec.image,
        digest: s.image.digest,
        restarts: sameRun ? (previous?.restarts ?? 0) : 0,
        deployment: s.deployment,
        spec: s.spec,
        ...(s.networks?.length ? { networks: s.networks } : {}),
      };
    });
    // Its old address is gone: peers forget it now, not when the new container starts (it may wait for a device).
    if (hadAddress) await this.peersChanged();
    await this.devices.start(s.service, s.containerId, s.spec.devices, async () => {
      await runtime.start(s.containerId);
      // Started late (its device came): another container may hold the service's place, and the plan stops this one.
      if (this.db.data.services[s.service]?.containerId !== s.containerId) return;
      this.supervise(s.service, s.containerId, s.spec, s.failures);
      await this.peersChanged();
    });
  }

  /** Rewrites the peers' /etc/hosts; a failure is told as an event, never fails the start that caused it. */
  private async peersChanged(): Promise<void> {
    try {
      await this.networks?.refreshPeers();
    } catch (err) {
      this.deps.event({ type: "error", message: `updating the services' /etc/hosts: ${(err as Error).message}` });
    }
  }

  /**
   * Takes over what a previous agent left, from db.json's service records:
   * running containers are adopted, not restarted; exited ones are handled by
   * their restart policy; one a crash left created but never started is
   * started now; a container of ours that no record names (a crash mid-swap)
   * is removed.
   */
  async adopt(): Promise<void> {
    const records = this.db.data.services;
    await this.deps.runtime.network?.sweep();
    const known = new Set(Object.values(records).map((r) => r.containerId));
    for (const c of this.deps.runtime.list()) {
      if (c.spec.labels["fleetlet.service"] !== undefined && !known.has(c.id)) {
        await this.deps.runtime.delete(c.id, { force: true });
        this.deps.event({ type: "orphanRemoved", container: c.id });
      }
    }
    for (const [service, rec] of Object.entries(records)) {
      let info: ReturnType<ContainerDriver["inspect"]>;
      try {
        info = this.deps.runtime.inspect(rec.containerId);
      } catch (err) {
        if (!isNotFound(err)) throw err;
        await this.forget(service); // gone while we were away: the next apply starts it anew
        continue;
      }
      const exitCode = info.exit?.exitCode ?? 1;
      const adopt =
        info.status === "running" || (info.status === "exited" && !shouldRestart(rec.spec.restart, exitCode));
      // A running container whose network was broken while no agent watched is made anew.
      const lost =
        info.status === "running" && rec.networks?.length ? await this.networks?.lost(rec.containerId) : undefined;
      if (lost) this.deps.event({ type: "networkLost", service, message: lost });
      if (adopt && !lost) this.supervise(service, rec.containerId, rec.spec, 0);
      else {
        await this.recreate(service, 1).catch((err: Error) =>
          this.deps.event({ type: "error", service, message: err.message }),
        );
      }
    }
    await this.networks?.refreshPeers();
  }

  supervise(service: string, containerId: string, spec: ServiceSpec, failures: number): void {
    this.supervisors.get(service)?.detach();
    const events = { event: this.deps.event, changed: this.deps.changed, restart: this.recreate.bind(this) };
    const sup = new ServiceSupervisor(service, containerId, spec, this.deps.runtime, events, failures);
    this.supervisors.set(service, sup);
    sup.start();
    this.devices.follow(service, containerId, spec.devices);
  }

  /** Restarts a service by its policy: a fresh container of the same spec, its image leased meanwhile. */
  async recreate(service: string, failures: number): Promise<void> {
    const rec = this.db.data.services[service];
    if (!rec) return;
    const { store } = this.deps;
    const lease = await store.leases.take(`restart ${service}`);
    try {
      const stored = store.images.get(rec.image);
      if (stored) await lease.add(imageContent(stored));
      const image =
        stored && store.isWhole(stored)
          ? stored
          : await this.deps.pull(rec.image, { signal: new AbortController().signal, lease });
      const { containerId, hash, spec, deployment, networks } = rec;
      await this.startService({ service, spec, hash, containerId, image, deployment, failures, networks });
    } finally {
      await lease.release();
    }
    await this.db.update((d) => {
      const now = d.services[service];
      if (now) now.restarts = rec.restarts + 1;
    });
    // Running again, under a new pid and restart count: the reported state goes out only on a change.
    this.deps.changed();
  }

  /** POST /v1/services/<name>/restart. */
  async restartService(service: string): Promise<void> {
    const rec = this.db.data.services[service];
    if (!rec) throw new FleetError("E_NOT_FOUND", `no service named ${service}`);
    await this.devices.stop(service); // a start in flight finishes first, so the container stopped is the one it made
    this.supervisors.get(service)?.detach();
    try {
      await this.deps.runtime.stop(rec.containerId, { timeoutMs: rec.spec.stopTimeoutMs, signal: rec.spec.stopSignal });
    } catch (err) {
      if ((err as FleetError).code !== "E_CONFLICT") throw err; // already stopped: recreate it all the same
    }
    await this.recreate(service, 0);
  }

  async stopContainer(service: string, containerId: string, timeoutMs: number, signal: string): Promise<void> {
    await this.devices.stop(service, containerId); // a start its device brought, in flight, is stopped below
    const sup = this.supervisors.get(service);
    if (sup?.containerId === containerId) sup.detach();
    try {
      if (this.deps.runtime.inspect(containerId).status === "running") {
        await this.deps.runtime.stop(containerId, { timeoutMs, signal });
      }
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    this.deps.event({ type: "stopped", service, container: containerId });
  }

  async removeContainer(service: string, containerId: string): Promise<void> {
    try {
      await this.deps.runtime.delete(containerId, { force: true });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    if (this.db.data.services[service]?.containerId !== containerId) return;
    await this.db.update((d) => {
      if (d.services[service]?.containerId === containerId) delete d.services[service];
    });
    this.supervisors.get(service)?.detach();
    this.supervisors.delete(service);
    await this.devices.stop(service, containerId);
    await this.networks?.refreshPeers();
  }

  /** Forgets a service whose container vanished while no agent watched. */
  async forget(service: string): Promise<void> {
    await this.db.update((d) => {
      delete d.services[service];
    });
  }

  logs(service: string, tail?: number): string {
    const rec = this.db.data.services[service];
    if (!rec) throw new FleetError("E_NOT_FOUND", `no service named ${service}`);
    return this.deps.runtime.logs(rec.containerId, tail === undefined ? {} : { tail });
  }

  /** Each service as the reported document shows it. */
  reports(): Record<string, ServiceReport> {
    const services: Record<string, ServiceReport> = {};
    for (const [name, rec] of Object.entries(this.db.data.services))
      services[name] = serviceReport(rec, {
        runtime: this.deps.runtime,
        supervisor: this.supervisors.get(name),
        waitingFor: this.devices.waitingFor(name, rec.containerId),
        devices: this.devices.presence(name),
      });
    return services;
  }

  /** Stops watching; the containers keep running. */
  detachAll(): void {
    for (const sup of this.supervisors.values()) sup.detach();
    this.devices.stopAll();
  }
}
