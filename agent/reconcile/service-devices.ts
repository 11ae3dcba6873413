/**
 * The host devices of the device's services, over time. A service whose
 * device is absent when its container is to start waits for it
 * (`waitingForDevice`, naming the device) and starts once it appears; a
 * running service follows its devices: unplugged, its node leaves the
 * container and its cgroup rule is revoked; plugged back, both return with
 * the device's numbers of now, in the same running container. The
 * DeviceWatcher says when to look again (inotify on the device directory);
 * the runtime does the looking and the changing.
 */
import type { DevicePresence } from "../../schemas/device.js";
import type { FleetError } from "../errors.js";
import type { ContainerDriver } from "./container-driver.js";

/** Says (debounced) when a device under `paths` may have come or gone; returns the unsubscribe. */
export interface DeviceWatcher {
  subscribe(paths: readonly string[], onChange: () => void): () => void;
}

export interface ServiceDevicesDeps {
  runtime: ContainerDriver;
  /** Without one, nothing waits and nothing is followed: an absent device fails the start. */
  deviceWatch?: DeviceWatcher;
  event(e: { type: string; service: string; [k: string]: unknown }): void;
  changed(): void;
}

interface Watched {
  containerId: string;
  unsubscribe: () => void;
  /** Waiting: the devices still absent. */
  absent?: string[];
  /** Running: whether each device is there, as last followed. */
  presence?: DevicePresence[];
  /** Follows run one at a time per container. */
  queue: Promise<void>;
  /** Waiting: a start the device's arrival brought is in flight. */
  starting?: boolean;
  /** A look (or a retried start) is queued and has not begun: changes meanwhile need no other. */
  queued?: boolean;
}

/** A service's device, as its spec names it. */
type Device = { path: string };
const pathsOf = (devices: readonly Device[]) => devices.map((d) => d.path);
const isAbsent = (err: unknown) => (err as FleetError).code === "E_DEVICE_ABSENT";

export class ServiceDevices {
  private readonly watched = new Map<string, Watched>();
  /** Containers stopped while a start was in flight: that start must not follow them. */
  private readonly cancelled = new Set<string>();

  constructor(private readonly deps: ServiceDevicesDeps) {}

  /**
   * Runs `begin` (start the container and supervise it). If a device is
   * absent, the service waits, and `begin` runs again when its devices
   * change, until it no longer finds one absent.
   */
  async start(service: string, containerId: string, devices: readonly Device[], begin: () => Promise<void>) {
    // Another container's start in flight must not follow it once this one runs.
    if (this.watched.get(service)?.containerId !== containerId) void this.stop(service);
    else this.drop(service);
    try {
      await begin();
    } catch (err) {
      const { runtime, deviceWatch } = this.deps;
      if (!isAbsent(err) || !deviceWatch || !runtime.absentDevices) throw err;
      const w: Watched = { containerId, unsubscribe: () => {}, queue: Promise.resolve() };
      w.absent = runtime.absentDevices(containerId);
      this.watched.set(service, w);
      w.unsubscribe = deviceWatch.subscribe(pathsOf(devices), () => this.retry(service, w, begin));
      this.deps.event({ type: "waitingForDevice", service, devices: w.absent });
      this.deps.changed();
      this.retry(service, w, begin); // a device that came between the start and the watch made no event to wait for
    }
  }

  private retry(service: string, w: Watched, begin: () => Promise<void>): void {
    if (w.queued) return;
    w.queued = true;
    w.queue = w.queue.then(async () => {
      w.queued = false;
      if (this.watched.get(service) !== w || !w.absent) return;
      try {
        w.starting = true;
        await begin(); // calls follow(), which takes this service's place
      } catch (err) {
        if (!isAbsent(err)) {
          this.drop(service);
          this.deps.event({ type: "error", service, message: (err as Error).message });
          this.deps.changed();
          return;
        }
        if (this.watched.get(service) !== w) return; // stopped meanwhile: its container may be gone
        const absent = this.deps.runtime.absentDevices!(w.containerId);
        if (JSON.stringify(absent) === JSON.stringify(w.absent)) return;
        w.absent = absent;
        this.deps.changed();
      } finally {
        w.starting = false;
        this.cancelled.delete(w.containerId);
      }
    });
  }

  /** Follows a running container's devices from now on (and once at once: they may have changed meanwhile). */
  follow(service: string, containerId: string, devices: readonly Device[]): void {
    if (this.cancelled.has(containerId)) return; // stopped while its start was in flight: another's place now
    this.drop(service);
    const { runtime, deviceWatch } = this.deps;
    if (devices.length === 0 || !deviceWatch || !runtime.followDevices) return;
    const w: Watched = { containerId, unsubscribe: () => {}, queue: Promise.resolve() };
    this.watched.set(service, w);
    const look = () => {
      if (w.queued) return; // the look queued will see this change too
      w.queued = true;
      w.queue = w.queue.then(() => {
        w.queued = false;
        return this.look(service, w);
      });
    };
    w.unsubscribe = deviceWatch.subscribe(pathsOf(devices), look);
    look();
  }

  private async look(service: string, w: Watched): Promise<void> {
    if (this.watched.get(service) !== w) return;
    try {
      const presence = await this.deps.runtime.followDevices!(w.containerId);
      if (this.watched.get(service) !== w) return;
      const before = w.presence;
      w.presence = presence;
      for (const [i, d] of presence.entries()) {
        if (d.error) this.deps.event({ type: "error", service, device: d.path, message: d.error });
        else if (before && before[i]?.present !== d.present)
          this.deps.event({ type: d.present ? "deviceAdded" : "deviceRemoved", service, device: d.path });
      }
      if (JSON.stringify(before) !== JSON.stringify(presence)) this.deps.changed();
    } catch (err) {
      if (this.watched.get(service) !== w) return; // stopped meanwhile: the container may be gone
      // Exited: no /dev to follow, and a restart follows its new container; not an error at each later change.
      if ((err as FleetError).code === "E_CONFLICT") {
        this.drop(service, w.containerId);
        this.deps.changed();
        return;
      }
      this.deps.event({ type: "error", service, message: (err as Error).message });
    }
  }

  /** The devices a service waits for, when it waits (for this container, if named). */
  waitingFor(service: string, containerId?: string): string[] | undefined {
    const w = this.watched.get(service);
    if (!w?.absent || (containerId !== undefined && w.containerId !== containerId)) return undefined;
    return w.absent;
  }

  presence(service: string): DevicePresence[] | undefined {
    return this.watched.get(service)?.presence;
  }

  /**
   * Stops waiting for or following a service's devices (for this container
   * only, if named). Resolves once what was under way for it is done: a
   * start its device brought has then started the container (which the
   * caller then stops) but follows nothing.
   */
  stop(service: string, containerId?: string): Promise<void> {
    const w = this.drop(service, containerId);
    if (!w) return Promise.resolve();
    if (w.starting) this.cancelled.add(w.containerId);
    return w.queue;
  }

  /** Unsubscribes and forgets a service's entry (for this container only, if named). */
  private drop(service: string, containerId?: string): Watched | undefined {
    const w = this.watched.get(service);
    if (!w || (containerId !== undefined && w.containerId !== containerId)) return undefined;
    w.unsubscribe();
    this.watched.delete(service);
    return w;
  }

  stopAll(): void {
    for (const service of [...this.watched.keys()]) void this.stop(service);
  }
}
