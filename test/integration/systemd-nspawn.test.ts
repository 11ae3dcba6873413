/**
 * The x64 release bundle under a real systemd: a Debian guest booted with
 * systemd-nspawn (systemd as PID 1; test/support/nspawn-guest.ts), the bundle
 * installed in it with its install.sh, the unit started as systemd starts it.
 * The guest shares the host's network, so its agent reaches the test broker
 * and registry on 127.0.0.1.
 *
 * Where the containers' cgroups go: at the root of the hierarchy the agent
 * sees (`fleetlet/<id>`), outside the unit's cgroup, so that stopping,
 * restarting or crashing the unit leaves them running (README, "Under
 * systemd"). A guest nspawn boots on this hybrid host gets the v1 controllers
 * read-only: no container can get its cgroups there, and the runtime says so.
 * A guest booted on the unified cgroup2 hierarchy is delegated its subtree of
 * it, without controllers (the host binds them to v1): containers run there
 * without limits, and a limit is refused by naming the missing controller.
 * The limits themselves are shown outside nspawn (limits.test.ts).
 *
 * Cold, the guest's root filesystem is debootstrapped first (1m19s here;
 * scripts/bootstrap.sh does it once beforehand); warm, the file takes about
 * 45 s, most of it the bundle's build and the two boots.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { detectCgroupLayout } from "../../agent/runtime/cgroup-layout.js";
import type { ReportedState } from "../../schemas/reported.js";
import { freePort } from "../support/free-port.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { bootGuest, type Guest, guestRootfs, missingTools, ROOTFS_TIMEOUT_MS } from "../support/nspawn-guest.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { BUILD_TIMEOUT_MS, releaseBundle, unpackBundle } from "../support/release-bundle.js";
import { waitFor } from "../support/wait-for.js";

const DEVICE = "dev-nspawn";
const busybox = inject("busyboxRootfs");
const hostMode = detectCgroupLayout().mode;
const work = mkdtempSync(join(tmpdir(), "fleetlet-nspawn-"));
let rootfs: string;
let bundle: string;
let reg: RegistryFixture;
let broker: MosquittoFixture;
let operator: mqtt.MqttClient;
let guest: Guest | undefined;
const reports: ReportedState[] = [];
const latest = () => reports.at(-1);

beforeAll(async () => {
  const missing = missingTools();
  if (missing) throw new Error(missing);
  const [tarball, registry, mosquitto] = await Promise.all([
    releaseBundle(inject("releaseDir"), "x64"),
    startRegistry({ auth: "htpasswd" }),
    startMosquitto(),
  ]);
  [reg, broker] = [registry, mosquitto];
  rootfs = guestRootfs();
  mkdirSync(join(work, "unpacked"));
  bundle = await unpackBundle(tarball, join(work, "unpacked"));
  operator = mqtt.connect(broker.url, { clientId: "operator-nspawn" });
  await new Promise((resolve) => operator.once("connect", resolve));
  await operator.subscribeAsync(`fleet/devices/${DEVICE}/reported`, { qos: 1 });
  operator.on("message", (_topic, payload) => {
    if (payload.length) reports.push(JSON.parse(payload.toString()));
  });
}, BUILD_TIMEOUT_MS + ROOTFS_TIMEOUT_MS);

afterAll(async () => {
  await guest?.stop();
  operator?.end(true);
  await Promise.all([reg?.stop(), broker?.stop()]);
  rmSync(work, { recursive: true, force: true });
}, 120_000);

const binds = (): [string, string][] => [
  [bundle, "/root/bundle"],
  [busybox, "/root/busybox"],
  [join(work, "seed"), "/root/seed"],
];

describe("a guest nspawn boots as it picks for this host", () => {
  it("refuses a container by naming the read-only cgroup hierarchy and the missing delegation", async () => {
    mkdirSync(join(work, "seed"), { recursive: true });
    const g = await bootGuest({ rootfs, name: "fleetlet-hybrid", bindRo: binds() });
    guest = g;
    try {
      expect(g.sh("cat /proc/1/comm").trim()).toBe("systemd");
      const r = g.run(["/root/bundle/bin/fleetlet", "run", "--rm", "--rootfs", "/root/busybox", "--", "/bin/true"]);
      if (hostMode === "v2") {
        // A pure cgroup2 host hands the guest a delegated subtree: the container runs.
        expect(r.stderr).toBe("");
        expect(r.status).toBe(0);
      } else {
        expect(r.status, r.stderr).not.toBe(0);
        expect(r.stderr).toContain("cgroup hierarchy is mounted read-only");
        expect(r.stderr).toContain("was not delegated its cgroups");
        expect(r.stderr).toContain("[E_CGROUP]");
      }
    } finally {
      guest = undefined;
      await g.stop();
    }
  }, 240_000);
});

describe("the bundle installed in a guest on the unified cgroup2 hierarchy", () => {
  const show = () =>
    Object.fromEntries(
      guest!
        .sh("systemctl show -p StatusText,ActiveState,SubState,MainPID,NRestarts,ControlGroup fleetlet")
        .trim()
        .split("\n")
        .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
    ) as Record<string, string>;
  const cmdline = (pid: number) => guest!.run(["cat", `/proc/${pid}/cmdline`]).stdout.split("\0")[0];
  const active = (want: { not?: string } = {}) =>
    waitFor(
      "the agent active again",
      () => {
        const s = show();
        return s.ActiveState === "active" && s.MainPID !== want.not && /service\(s\) adopted/.test(s.StatusText!)
          ? s
          : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 250, context: () => JSON.stringify(show()) },
    );
  /** The pid `fleetlet ps` shows for the container web while it runs (what it shows otherwise). */
  const running = () => {
    const list = JSON.parse(guest!.sh("/root/bundle/bin/fleetlet ps -a --json")) as Record<string, unknown>[];
    const web = list.find((c) => c.id === "web");
    return web?.status === "running" ? web.pid : web;
  };
  let containerPid = 0;

  beforeAll(async () => {
    const config = {
      deviceId: DEVICE,
      mqtt: { url: broker.url, insecure: true },
      registries: { [reg.host]: { username: reg.username, password: reg.password, ca: "/etc/fleetlet/reg-ca.pem" } },
      api: { listen: `127.0.0.1:${await freePort()}`, socket: "/run/fleetlet/api.sock" },
    };
    writeFileSync(join(work, "seed/config.json"), JSON.stringify(config));
    writeFileSync(join(work, "seed/reg-ca.pem"), readFileSync(reg.caFile));
    mkdirSync(join(work, "state"));
    guest = await bootGuest({
      rootfs,
      name: "fleetlet-unified",
      unified: true,
      bind: [[join(work, "state"), "/var/lib/fleetlet"]],
      bindRo: binds(),
    });
  }, 180_000);

  it("installs with install.sh and becomes active through Type=notify, with its status text", () => {
    guest!.sh(
      "mkdir -m 0750 -p /etc/fleetlet && install -m 0600 /root/seed/config.json /root/seed/reg-ca.pem /etc/fleetlet/",
    );
    const r = guest!.run(["/root/bundle/install.sh"]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain("systemctl enable --now fleetlet");
    // `enable --now` returns once the start job is done, which for Type=notify is READY=1.
    const s = show();
    expect(s).toMatchObject({ ActiveState: "active", SubState: "running" });
    expect(s.StatusText).toBe(`device ${DEVICE}: 0 service(s) adopted`);
    expect(guest!.sh("systemctl show -P Type,NotifyAccess,Delegate fleetlet").trim().split("\n")).toEqual([
      "notify",
      "main",
      "yes",
    ]);
  });

  it("runs a container without limits in a cgroup of its own at the hierarchy's root, outside the unit's", () => {
    guest!.sh("/root/bundle/bin/fleetlet run -d --name web --rootfs /root/busybox -- /bin/sleep 1000");
    containerPid = running() as number;
    expect(cmdline(containerPid)).toBe("/bin/sleep");
    expect(guest!.sh(`cat /proc/${containerPid}/cgroup`)).toMatch(/^0::\/fleetlet\/web$/m);
    expect(show().ControlGroup).toBe("/system.slice/fleetlet.service");
    // No controller was delegated to this guest: a limit is refused by naming it, not with ENOENT.
    const limited = guest!.run(
      ["/root/bundle/bin/fleetlet", "run", "--rm", "--memory", "32Mi"].concat([
        "--rootfs",
        "/root/busybox",
        "/bin/true",
      ]),
    );
    if (guest!.sh("cat /sys/fs/cgroup/cgroup.controllers").includes("memory")) expect(limited.status).toBe(0);
    else expect(limited.stderr).toContain("cannot apply memory.max: the memory controller is not available");
  });

  it("comes back from `systemctl restart`, the container untouched", async () => {
    const before = show().MainPID;
    guest!.sh("systemctl restart fleetlet");
    const s = await active({ not: before });
    expect(s.SubState).toBe("running");
    expect(running()).toBe(containerPid);
  });

  it("stops with `systemctl stop`, leaving the container running", () => {
    const main = Number(show().MainPID);
    guest!.sh("systemctl stop fleetlet");
    expect(show()).toMatchObject({ ActiveState: "inactive", SubState: "dead", MainPID: "0" });
    expect(guest!.run(["test", "-e", `/proc/${main}`]).status).not.toBe(0);
    expect(running()).toBe(containerPid);
  });

  it("is restarted by systemd after a crash (kill -9), the container still the same process", async () => {
    guest!.sh("systemctl start fleetlet");
    const first = await active();
    const restarts = Number(first.NRestarts);
    guest!.sh(`kill -9 ${first.MainPID}`);
    const s = await active({ not: first.MainPID });
    expect(Number(s.NRestarts)).toBe(restarts + 1);
    expect(running()).toBe(containerPid);
  }, 180_000);

  it("refuses a service, which always has the policy's default limits, by naming the missing controller", async () => {
    const image = `${reg.host}/nspawn/busybox:1`;
    const host = join(work, "operator.json");
    const registries = registriesConfig(reg);
    writeFileSync(host, JSON.stringify({ registries }));
    const push = spawnSync(join(bundle, "bin/fleetctl"), ["--config", host, "push", busybox, image], {
      encoding: "utf8",
      timeout: 120_000,
    });
    expect(push.status, push.stderr).toBe(0);
    operator.publish(
      `fleet/devices/${DEVICE}/desired`,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: "nspawn-1",
        generation: 1,
        services: { web: { image, command: ["/bin/sleep", "1000"], stopTimeoutMs: 300 } },
      }),
      { qos: 1, retain: true },
    );
    const r = await waitFor("the deployment to fail", () => (latest()?.phase === "failed" ? latest() : undefined), {
      timeoutMs: 120_000,
      intervalMs: 100,
      context: () => JSON.stringify(latest()),
    });
    expect(r.lastError?.code).toBe("E_CGROUP");
    expect(r.lastError?.message).toContain("cannot apply memory.max: the memory controller is not available");
    // The plain container is still there, untouched by the failed deployment.
    expect(running()).toBe(containerPid);
  }, 180_000);
});
