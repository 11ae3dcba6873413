import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { checkResult, outwardAttachment, pluginChain, resultAddress } from "../../agent/runtime/cni-config.js";
import { containerResolvConf, hostsContent, rewriteInPlace } from "../../agent/runtime/hosts-file.js";
import { containerSpec } from "../../schemas/container.js";
import { formatIssues } from "../../schemas/format-issues.js";

const attachment = (internal: boolean) => ({
  network: "backend",
  bridge: "fl-0123456789ab",
  subnet: "10.89.0.0/24",
  internal,
});

describe("a container's /etc/hosts", () => {
  it("names localhost, the container and its peers", () => {
    expect(
      hostsContent([{ address: "10.89.0.3", names: ["web", "www"] }], [{ address: "10.89.0.2", names: ["db"] }]),
    ).toBe("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.89.0.3\tweb www\n10.89.0.2\tdb\n");
  });
});

describe("rewriting a bind-mounted name file in place", () => {
  it("keeps the file (its inode) and leaves exactly the new content, longer or shorter", () => {
    const dir = mkdtempSync(join(tmpdir(), "fleetlet-hosts-"));
    try {
      const path = join(dir, "hosts");
      rewriteInPlace(path, "first\n");
      const inode = statSync(path).ino;
      rewriteInPlace(path, "a much longer second content\n");
      expect(readFileSync(path, "utf8")).toBe("a much longer second content\n");
      rewriteInPlace(path, "third\n");
      expect(readFileSync(path, "utf8")).toBe("third\n");
      expect(statSync(path).ino).toBe(inode);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("is never seen empty by a reader while it changes", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fleetlet-hosts-race-"));
    const path = join(dir, "hosts");
    writeFileSync(path, hostsContent([], []));
    // A reader on another thread, as a resolver in the container would read the file while the agent rewrites it.
    // It counts its reads in shared memory, so the writer knows they overlapped.
    const counter = new Int32Array(new SharedArrayBuffer(4));
    const reader = new Worker(
      `const { readFileSync } = require("node:fs"); const { parentPort, workerData } = require("node:worker_threads");
       const { path, counter } = workerData; let empty = 0; let stop = false;
       parentPort.on("message", () => { stop = true; }); parentPort.postMessage("ready");
       (function loop() { for (let i = 0; i < 200; i++) { Atomics.add(counter, 0, 1); if (readFileSync(path, "utf8") === "") empty++; }
         if (stop) parentPort.postMessage({ reads: Atomics.load(counter, 0), empty }); else setImmediate(loop); })();`,
      { eval: true, workerData: { path, counter } },
    );
    try {
      await new Promise((r) => reader.once("message", r));
      // At least 20,000 rewrites, and on until the reader has read 2,000 times during them (a loaded machine may starve it).
      const from = Atomics.load(counter, 0);
      const giveUp = Date.now() + 60_000;
      for (let i = 0; i < 20_000 || (Atomics.load(counter, 0) - from < 2000 && Date.now() < giveUp); i++)
        rewriteInPlace(path, hostsContent([], i % 2 ? [{ address: "10.89.0.2", names: ["db"] }] : []));
      const overlapped = Atomics.load(counter, 0) - from;
      const seen = new Promise<{ reads: number; empty: number }>((r) => reader.once("message", r));
      reader.postMessage("stop");
      const { empty } = await seen;
      expect(overlapped).toBeGreaterThanOrEqual(2000);
      expect(empty).toBe(0);
    } finally {
      await reader.terminate();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("a container's /etc/resolv.conf", () => {
  it("is the host's when no nameserver is on loopback", () => {
    expect(containerResolvConf("search lan\nnameserver 192.0.2.53", undefined)).toBe(
      "search lan\nnameserver 192.0.2.53\n",
    );
  });

  it("replaces systemd-resolved's stub by its upstream servers", () => {
    const host = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
    const upstream = "nameserver 192.0.2.1\nnameserver 2001:db8::1\nsearch lan\n";
    expect(containerResolvConf(host, upstream)).toBe(
      "# fleetlet: 127.0.0.53 (loopback on the host) replaced by the host's upstream servers\noptions edns0 trust-ad\nsearch lan\nnameserver 192.0.2.1\nnameserver 2001:db8::1\n",
    );
  });

  it("drops loopback nameservers, and says so, when no upstream is known", () => {
    expect(containerResolvConf("nameserver 127.0.0.1\nnameserver ::1\nnameserver 192.0.2.9\n", undefined)).toBe(
      "# fleetlet: 127.0.0.1, ::1 (loopback on the host) dropped: no upstream server known\nnameserver 192.0.2.9\n",
    );
  });
});

describe("the CNI plugin chain of an attachment", () => {
  const dir = "/var/lib/fleetlet/network/ipam";

  it("is bridge with host-local, NAT, hairpin and the default route, then portmap for published ports", () => {
    const ports = [
      { hostIp: "", hostPort: 8080, containerPort: 80, protocol: "tcp" as const },
      { hostIp: "127.0.0.1", hostPort: 9090, containerPort: 9090, protocol: "tcp" as const },
    ];
    const [bridge, portmap, ...rest] = pluginChain({
      attachment: attachment(false),
      ports,
      defaultRoute: true,
      ipamDir: dir,
    });
    expect(rest).toEqual([]);
    expect(bridge).toMatchObject({
      cniVersion: "1.0.0",
      name: "fl-0123456789ab",
      type: "bridge",
      bridge: "fl-0123456789ab",
      isGateway: true,
      ipMasq: false,
      hairpinMode: true,
      ipam: {
        type: "host-local",
        ranges: [[{ subnet: "10.89.0.0/24" }]],
        routes: [{ dst: "0.0.0.0/0" }],
        dataDir: dir,
      },
    });
    expect(portmap).toMatchObject({
      type: "portmap",
      capabilities: { portMappings: true },
      runtimeConfig: {
        portMappings: [
          { hostPort: 8080, containerPort: 80, protocol: "tcp" },
          { hostPort: 9090, containerPort: 9090, protocol: "tcp", hostIP: "127.0.0.1" },
        ],
      },
    });
  });

  it("gives an internal network no gateway and no route", () => {
    const [bridge, ...rest] = pluginChain({
      attachment: attachment(true),
      ports: [],
      defaultRoute: false,
      ipamDir: dir,
    });
    expect(rest).toEqual([]);
    expect(bridge).toMatchObject({ isGateway: false, ipMasq: false, ipam: { routes: [] } });
  });

  it("routes out and publishes through the first attachment that is not internal", () => {
    expect(outwardAttachment({ attachments: [attachment(true), attachment(false), attachment(false)] })).toBe(1);
    expect(resultAddress({ ips: [{ address: "10.89.0.7/24", gateway: "10.89.0.1" }] })).toBe("10.89.0.7");
  });

  it("is checked against the bridge's MAC address as it is now, and nothing else of the recorded result changes", () => {
    const recorded = {
      cniVersion: "1.0.0",
      interfaces: [
        { name: "fl-abc", mac: "0e:00:00:00:00:01" },
        { name: "veth1", mac: "0e:00:00:00:00:02" },
        { name: "eth0", mac: "0e:00:00:00:00:03", sandbox: "/run/ns" },
      ],
      ips: [{ address: "10.89.0.7/24", interface: 2 }],
    };
    const checked = checkResult(recorded, "fl-abc", "02:00:00:00:0f:01");
    expect(checked).toEqual({
      ...recorded,
      interfaces: [{ name: "fl-abc", mac: "02:00:00:00:0f:01" }, recorded.interfaces[1], recorded.interfaces[2]],
    });
    expect(recorded.interfaces[0]!.mac).toBe("0e:00:00:00:00:01"); // the record itself is left as it was
    // A bridge that is gone: CHECK gets the record as it is, and says the bridge is missing.
    expect(checkResult(recorded, "fl-abc", undefined)).toBe(recorded);
  });
});

describe("a container spec's networks", () => {
  const base = { layers: ["/l"], command: ["/bin/true"] };
  const refusal = (extra: Record<string, unknown>) => {
    const r = containerSpec.safeParse({ ...base, ...extra });
    return r.success ? "" : formatIssues(r.error);
  };

  it("joins bridges only with network bridge, and publishes ports only there", () => {
    expect(refusal({ network: "bridge", attachments: [attachment(false)] })).toBe("");
    expect(refusal({ network: "bridge" })).toContain('attachments: a container joins networks with network "bridge"');
    expect(refusal({ attachments: [attachment(false)] })).toContain("attachments:");
    expect(refusal({ ports: [{ hostIp: "", hostPort: 1, containerPort: 1, protocol: "udp" }] })).toContain(
      'ports: ports are published only with network "bridge"',
    );
    expect(refusal({ network: "bridge", attachments: [{ ...attachment(false), bridge: "Bad_Name" }] })).toContain(
      "attachments.0.bridge",
    );
  });
});
