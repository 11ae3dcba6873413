/**
 * ServiceDevices over a driver and a watcher of the test's own: a service
 * waits while its device is absent and starts at the first change that
 * brings it (or at once, when it came before the watch did); a running
 * service's devices are followed at once and at each change, and what the
 * follow finds is reported and announced.
 */
import { describe, expect, it } from "vitest";
import { FleetError } from "../../agent/errors.js";
import type { ContainerDriver } from "../../agent/reconcile/container-driver.js";
import { ServiceDevices } from "../../agent/reconcile/service-devices.js";
import type { DevicePresence } from "../../schemas/device.js";

const tick = () => new Promise((r) => setTimeout(r, 0));

function harness() {
  const present = new Set<string>();
  const container = { running: true, follows: 0, followed: [] as string[], slow: Promise.resolve() };
  const subscriptions: { paths: readonly string[]; onChange: () => void; active: boolean }[] = [];
  const events: { type: string; [k: string]: unknown }[] = [];
  const runtime = {
    absentDevices: () => ["/dev/ttyUSB0"].filter((p) => !present.has(p)),
    followDevices: async (id: string): Promise<DevicePresence[]> => {
      container.follows++;
      container.followed.push(id);
      await container.slow;
      if (!container.running) throw new FleetError("E_CONFLICT", "container c1 is not running");
      return [{ path: "/dev/ttyUSB0", target: "/dev/ttyUSB0", present: present.has("/dev/ttyUSB0") }];
    },
  } as unknown as ContainerDriver;
  const deviceWatch = {
    subscribe(paths: readonly string[], onChange: () => void) {
      const sub = { paths, onChange, active: true };
      subscriptions.push(sub);
      return () => {
        sub.active = false;
      };
    },
  };
  const devices = new ServiceDevices({ runtime, deviceWatch, event: (e) => events.push(e), changed: () => {} });
  const change = async () => {
    for (const s of subscriptions.filter((x) => x.active)) s.onChange();
    await tick();
    await tick();
  };
  let starts = 0;
  const begin = async () => {
    if (!present.has("/dev/ttyUSB0")) throw new FleetError("E_DEVICE_ABSENT", "device /dev/ttyUSB0 is absent");
    starts++;
    devices.follow("serial", "c1", [{ path: "/dev/ttyUSB0" }]);
  };
  return { present, container, subscriptions, events, devices, change, begin, starts: () => starts };
}

describe("ServiceDevices", () => {
  it("keeps a service waiting while its device is absent, and starts it when a change brings the device", async () => {
    const h = harness();
    await h.devices.start("serial", "c1", [{ path: "/dev/ttyUSB0" }], h.begin);
    await tick();
    expect(h.devices.waitingFor("serial")).toEqual(["/dev/ttyUSB0"]);
    expect(h.devices.waitingFor("serial", "other")).toBeUndefined();
    expect(h.events).toContainEqual(expect.objectContaining({ type: "waitingForDevice", devices: ["/dev/ttyUSB0"] }));
    await h.change(); // something else changed: still waiting
    expect(h.starts()).toBe(0);
    h.present.add("/dev/ttyUSB0");
    await h.change();
    expect(h.starts()).toBe(1);
    expect(h.devices.waitingFor("serial")).toBeUndefined();
    expect(h.devices.presence("serial")).toEqual([{ path: "/dev/ttyUSB0", target: "/dev/ttyUSB0", present: true }]);
    // The waiting subscription was dropped for the following one.
    expect(h.subscriptions.map((s) => s.active)).toEqual([false, true]);
  });

  it("does not miss a device that came between the failed start and the watch", async () => {
    const h = harness();
    let first = true;
    await h.devices.start("serial", "c1", [{ path: "/dev/ttyUSB0" }], async () => {
      if (first) {
        first = false;
        h.present.add("/dev/ttyUSB0"); // plugged in just after the start found it absent
        throw new FleetError("E_DEVICE_ABSENT", "device /dev/ttyUSB0 is absent");
      }
      await h.begin();
    });
    await tick();
    await tick();
    expect(h.starts()).toBe(1);
  });

  it("announces a running service's device going and coming back", async () => {
    const h = harness();
    h.present.add("/dev/ttyUSB0");
    h.devices.follow("serial", "c1", [{ path: "/dev/ttyUSB0" }]);
    await tick();
    h.present.delete("/dev/ttyUSB0");
    await h.change();
    expect(h.devices.presence("serial")?.[0]?.present).toBe(false);
    h.present.add("/dev/ttyUSB0");
    await h.change();
    expect(h.events.map((e) => e.type)).toEqual(["deviceRemoved", "deviceAdded"]);
    h.devices.stop("serial", "other-container"); // another container's stop leaves this one followed
    expect(h.devices.presence("serial")).toBeDefined();
    h.devices.stop("serial");
    expect(h.devices.presence("serial")).toBeUndefined();
  });

  it("does not follow a container whose start, brought by its device, was still in flight when it was stopped", async () => {
    const h = harness();
    let open!: () => void;
    const gate = new Promise<void>((r) => {
      open = r;
    });
    const begin = async () => {
      if (!h.present.has("/dev/ttyUSB0")) throw new FleetError("E_DEVICE_ABSENT", "device /dev/ttyUSB0 is absent");
      await gate; // the container is being started
      await h.begin();
    };
    await h.devices.start("serial", "c1", [{ path: "/dev/ttyUSB0" }], begin);
    h.present.add("/dev/ttyUSB0");
    await h.change();
    // The service is removed meanwhile; its stop waits for the start in flight.
    let stopped = false;
    const stopping = Promise.resolve(h.devices.stop("serial", "c1")).then(() => {
      stopped = true;
    });
    await tick();
    expect(stopped).toBe(false);
    open();
    await stopping;
    await tick();
    expect(h.starts()).toBe(1);
    expect(h.subscriptions.filter((s) => s.active)).toEqual([]);
    expect(h.devices.presence("serial")).toBeUndefined();
  });

  it("stops following a container that has exited, without an error at every later change under the device root", async () => {
    const h = harness();
    h.present.add("/dev/ttyUSB0");
    h.devices.follow("serial", "c1", [{ path: "/dev/ttyUSB0" }]);
    await tick();
    h.container.running = false; // exited, and its restart policy says no more
    for (let i = 0; i < 3; i++) await h.change();
    expect(h.events.filter((e) => e.type === "error")).toEqual([]);
    expect(h.subscriptions.filter((s) => s.active)).toEqual([]);
  });

  it("takes a flood of changes that come while it follows as one more look, not one each", async () => {
    const h = harness();
    h.present.add("/dev/ttyUSB0");
    let release!: () => void;
    h.container.slow = new Promise<void>((r) => {
      release = r;
    });
    h.devices.follow("serial", "c1", [{ path: "/dev/ttyUSB0" }]);
    await tick();
    for (let i = 0; i < 50; i++) await h.change(); // a device flapping while the first look is under way
    release();
    for (let i = 0; i < 5; i++) await tick();
    expect(h.container.follows).toBe(2);
  });

  it("keeps following the service's new container when the old one's start, brought by its device, ends later", async () => {
    const h = harness();
    let open!: () => void;
    const gate = new Promise<void>((r) => {
      open = r;
    });
    const oldBegin = async () => {
      if (!h.present.has("/dev/ttyUSB0")) throw new FleetError("E_DEVICE_ABSENT", "device /dev/ttyUSB0 is absent");
      await gate; // the old container is being started
      h.devices.follow("serial", "c1", [{ path: "/dev/ttyUSB0" }]);
    };
    await h.devices.start("serial", "c1", [{ path: "/dev/ttyUSB0" }], oldBegin);
    h.present.add("/dev/ttyUSB0");
    await h.change();
    // A new deployment starts the service's next container meanwhile.
    await h.devices.start("serial", "c2", [{ path: "/dev/ttyUSB0" }], async () => {
      h.devices.follow("serial", "c2", [{ path: "/dev/ttyUSB0" }]);
    });
    open();
    for (let i = 0; i < 4; i++) await tick();
    h.container.followed.length = 0;
    await h.change();
    expect(h.container.followed).toEqual(["c2"]);
    expect(h.subscriptions.filter((s) => s.active)).toHaveLength(1);
  });
});
