import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { FleetError } from "../../agent/errors.js";
import { canonicalJson } from "../../agent/protocol/canonical-json.js";
import { checkPorts, type NetworkPlanInput, placeNetworks } from "../../agent/reconcile/network-plan.js";
import { ADDED_FIELD_DEFAULTS, specHash } from "../../agent/reconcile/plan.js";
import { parseForwardedPorts, parseRoutes, parseSockets } from "../../agent/runtime/host-network.js";
import type { NetworkRecord } from "../../schemas/db.js";
import { type DesiredStateInput, desiredState } from "../../schemas/desired.js";
import { formatIssues } from "../../schemas/format-issues.js";
import { type BoundPort, type HostRoute, parseCidr, parsePort } from "../../schemas/network.js";

const D1 = `sha256:${"1".repeat(64)}`;

function input(extra: Partial<DesiredStateInput>): DesiredStateInput {
  return { apiVersion: "fleetlet/v1", deployment: "d", generation: 1, services: {}, ...extra } as DesiredStateInput;
}

/** The message a document is refused with, or "" when it parses. */
function refusal(extra: Partial<DesiredStateInput>): string {
  const r = desiredState.safeParse(input(extra));
  return r.success ? "" : formatIssues(r.error);
}

const route = (cidr: string, iface = "eth0"): HostRoute => ({ dest: parseCidr(cidr)!, iface });

function planInput(doc: Partial<DesiredStateInput>, over: Partial<NetworkPlanInput> = {}): NetworkPlanInput {
  return {
    desired: desiredState.parse(input(doc)),
    recorded: {},
    host: { routes: [route("0.0.0.0/0"), route("192.168.2.0/24")], bound: [] },
    ownPorts: [],
    bridgeName: (n) => `fl-${n}`.slice(0, 15),
    ...over,
  };
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return `${(err as FleetError).code}: ${(err as Error).message}`;
  }
  return "";
}

const web = { image: "web:1" };

describe("the desired document's networks and ports", () => {
  it("takes the documented example", () => {
    expect(
      refusal({
        networks: { backend: { subnet: "auto", ipv6: false, internal: false } },
        services: {
          db: { ...web, networks: ["backend"] },
          web: { ...web, networks: ["backend"], ports: ["8080:80", "127.0.0.1:9090:9090", "5353:53/udp"] },
        },
      }),
    ).toBe("");
  });

  it.each([
    [
      { services: { web: { ...web, networks: ["front"] } } },
      'services.web.networks.0: unknown network "front" (declared: none)',
    ],
    [
      { services: { web: { ...web, ports: ["80"] } } },
      'services.web.ports.0: expected "[HOST_IP:]HOST_PORT:CONTAINER_PORT',
    ],
    [{ services: { web: { ...web, ports: ["70000:80"] } } }, "services.web.ports.0: expected"],
    [{ services: { web: { ...web, ports: ["8080:80/sctp"] } } }, "services.web.ports.0: expected"],
    [{ services: { web: { ...web, ports: ["300.1.1.1:80:80"] } } }, "services.web.ports.0: expected"],
    [
      { services: { a: { ...web, ports: ["8080:80"] }, b: { ...web, ports: ["127.0.0.1:8080:81"] } } },
      "services.b.ports.0: host port 8080/tcp is already published by services.a.ports[0]",
    ],
    [
      { services: { a: { ...web, ports: ["0.0.0.0:8080:80"] }, b: { ...web, ports: ["127.0.0.1:8080:81"] } } },
      "services.b.ports.0: host port 8080/tcp is already published by services.a.ports[0]",
    ],
    [
      { services: { web: { ...web, network: "host", ports: ["80:80"] } } },
      'services.web.ports: cannot publish ports with network "host"',
    ],
    [
      { networks: { n: {} }, services: { web: { ...web, network: "host", networks: ["n"] } } },
      'services.web.networks: cannot join networks with network "host"',
    ],
    [{ networks: { n: { subnet: "10.0.0.1/24" } } }, 'networks.n.subnet: expected "auto" or an IPv4 network'],
    [{ networks: { n: { subnet: "10.0.0.0/30" } } }, "networks.n.subnet: expected"],
    // Outside the private ranges a bridge would take the host's own routes (its loopback, the cloud's
    // 169.254.169.254, a public DNS server or broker) to the containers.
    ...["127.0.0.0/8", "169.254.169.0/24", "224.0.0.0/8", "0.0.0.0/8", "240.0.0.0/8", "8.8.8.0/28", "11.0.0.0/8"].map(
      (subnet): [object, string] => [
        { networks: { n: { subnet } } },
        "networks.n.subnet: expected a private network (within 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)",
      ],
    ),
    [{ networks: { n: { ipv6: true } } }, "networks.n.ipv6: IPv6 container networks are not supported yet"],
    [{ networks: { n: { mtu: 1400 } } }, 'networks.n: Unrecognized key: "mtu"'],
    [
      { networks: { n: { internal: true } }, services: { web: { ...web, networks: ["n"], ports: ["80:80"] } } },
      "services.web.ports: cannot publish ports from internal networks only",
    ],
  ])("refuses %j naming the field", (doc, message) => {
    expect(refusal(doc as Partial<DesiredStateInput>)).toContain(message);
  });

  it("takes subnets within the private ranges, up to a whole range", () => {
    for (const subnet of ["10.0.0.0/8", "10.20.0.0/24", "172.16.0.0/12", "172.31.255.240/28", "192.168.0.0/16"])
      expect(refusal({ networks: { n: { subnet } } })).toBe("");
  });

  it("lets the same host port be published for TCP and UDP, and on two host addresses", () => {
    const services = {
      a: { ...web, ports: ["53:53/udp", "127.0.0.1:80:80"] },
      b: { ...web, ports: ["53:53", "127.0.0.2:80:80"] },
    };
    expect(refusal({ services })).toBe("");
  });
});

describe("the spec hash of a service on no network", () => {
  it("is what it was before networks and ports existed, so an agent upgrade replaces nothing", () => {
    const spec = desiredState.parse(input({ services: { web } })).services.web!;
    expect(ADDED_FIELD_DEFAULTS).toMatchObject({ networks: [], ports: [] });
    const { init: _i, networks: _n, ports: _p, devices: _d, groupAdd: _g, ...before } = spec;
    const hashBefore = createHash("sha256")
      .update(canonicalJson({ spec: before, imageDigest: D1 }))
      .digest("hex");
    expect(specHash(spec, D1)).toBe(hashBefore);
    expect(specHash({ ...spec, ports: ["80:80"] }, D1)).not.toBe(hashBefore);
    expect(specHash(spec, D1, { backend: { subnet: "auto" } })).not.toBe(hashBefore);
  });
});

describe("placing networks on the host", () => {
  const two = { networks: { a: {}, b: {} }, services: { s: { ...web, networks: ["a", "b"] } } };

  it("gives each auto network its own /24 of 10.89.0.0/16, clear of the host's routes", () => {
    const placed = placeNetworks(planInput(two, { host: { routes: [route("10.89.0.0/24")], bound: [] } }));
    expect(placed.a).toMatchObject({ name: "a", subnet: "10.89.1.0/24", bridge: "fl-a" });
    expect(placed.b).toMatchObject({ name: "b", subnet: "10.89.2.0/24", bridge: "fl-b" });
  });

  it("gives a service that only publishes ports the deployment's default network", () => {
    const placed = placeNetworks(planInput({ services: { s: { ...web, ports: ["80:80"] } } }));
    expect(Object.keys(placed)).toEqual(["_default"]);
  });

  it("keeps a recorded network's subnet and bridge, and ignores the route its own bridge adds", () => {
    const recorded: Record<string, NetworkRecord> = {
      "fl-old-a": {
        name: "a",
        spec: { subnet: "auto", ipv6: false, internal: false },
        subnet: "10.89.7.0/24",
        bridge: "fl-old-a",
      },
    };
    const host = { routes: [route("10.89.7.0/24", "fl-old-a")], bound: [] };
    const placed = placeNetworks(planInput(two, { recorded, host }));
    expect(placed.a).toMatchObject({ subnet: "10.89.7.0/24", bridge: "fl-old-a" });
    expect(placed.b!.subnet).toBe("10.89.0.0/24");
  });

  it("refuses an explicit subnet that overlaps a host route, with E_NETWORK_CONFLICT naming both", () => {
    const doc = { networks: { a: { subnet: "192.168.2.128/25" } }, services: { s: { ...web, networks: ["a"] } } };
    expect(codeOf(() => placeNetworks(planInput(doc)))).toBe(
      "E_NETWORK_CONFLICT: networks.a.subnet: 192.168.2.128/25 overlaps the host's route to 192.168.2.0/24 (dev eth0)",
    );
  });

  it("refuses two networks whose explicit subnets overlap", () => {
    const doc = {
      networks: { a: { subnet: "10.50.0.0/16" }, b: { subnet: "10.50.3.0/24" } },
      services: { s: { ...web, networks: ["a", "b"] } },
    };
    expect(codeOf(() => placeNetworks(planInput(doc)))).toBe(
      "E_NETWORK_CONFLICT: networks.b.subnet: 10.50.3.0/24 overlaps network a (10.50.0.0/16)",
    );
  });
});

describe("checking published ports against the host", () => {
  const bound = (protocol: "tcp" | "udp", ip: string, port: number): BoundPort => ({ protocol, ip, port });
  const doc = { services: { web: { ...web, ports: ["8080:80", "127.0.0.1:9090:9090", "5353:53/udp"] } } };
  const check = (b: BoundPort[], ownPorts: NetworkPlanInput["ownPorts"] = []) =>
    codeOf(() => checkPorts(planInput(doc, { host: { routes: [], bound: b }, ownPorts })));

  it.each([
    [
      [bound("tcp", "", 8080)],
      "E_PORT_IN_USE: services.web.ports[0]: host port 8080/tcp is already bound on the host (all addresses)",
    ],
    [
      [bound("tcp", "192.0.2.5", 8080)],
      "E_PORT_IN_USE: services.web.ports[0]: host port 8080/tcp is already bound on the host (192.0.2.5)",
    ],
    [[bound("tcp", "", 9090)], "E_PORT_IN_USE: services.web.ports[1]"],
    [[bound("udp", "", 5353)], "E_PORT_IN_USE: services.web.ports[2]"],
  ])("refuses a port the host has bound: %j", (b, message) => {
    expect(check(b)).toContain(message);
  });

  it("takes 0.0.0.0 as every address, as the portmap plugin does: the agent's API on 127.0.0.1 is not taken", () => {
    // portmap publishes "0.0.0.0:7780:80" on every address, 127.0.0.1:7780 (the status endpoint) included.
    const api = { services: { web: { ...web, ports: ["0.0.0.0:7780:80"] } } };
    expect(
      codeOf(() => checkPorts(planInput(api, { host: { routes: [], bound: [bound("tcp", "127.0.0.1", 7780)] } }))),
    ).toBe("E_PORT_IN_USE: services.web.ports[0]: host port 7780/tcp is already bound on the host (127.0.0.1)");
    expect(parsePort("0.0.0.0:7780:80")).toEqual({ hostIp: "", hostPort: 7780, containerPort: 80, protocol: "tcp" });
  });

  it("passes a port bound for the other protocol, or on another address than the one published", () => {
    expect(check([bound("udp", "", 8080), bound("tcp", "", 5353), bound("tcp", "192.0.2.5", 9090)])).toBe("");
  });

  it("refuses a port a firewall rule forwards (another agent's published port), saying so", () => {
    expect(check([{ ...bound("tcp", "", 8080), forwarded: true }])).toBe(
      "E_PORT_IN_USE: services.web.ports[0]: host port 8080/tcp is already forwarded by a firewall rule (another container's published port?) on the host (all addresses)",
    );
  });

  it("passes a port our own running services publish", () => {
    const own = [{ hostIp: "", hostPort: 8080, containerPort: 80, protocol: "tcp" as const }];
    expect(check([bound("tcp", "", 8080)], own)).toBe("");
  });
});

describe("reading the ports the host's firewall forwards", () => {
  it("takes each DNAT rule's protocol, port and address from iptables -S (portmap's, as it writes them)", () => {
    const rules = [
      "-N CNI-HOSTPORT-DNAT",
      "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
      "-A CNI-DN-c98d0b1cb61dea83d4681 -s 10.77.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
      "-A CNI-DN-c98d0b1cb61dea83d4681 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.77.0.2:80",
      "-A CNI-DN-c98d0b1cb61dea83d4681 -d 127.0.0.1/32 -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.77.0.2:9090",
      "-A CNI-DN-c98d0b1cb61dea83d4681 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.77.0.2:53",
      '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"fl-try\\" id: \\"c1\\"" -m multiport --dports 8080,9090 -j CNI-DN-c98d0b1cb61dea83d4681',
      "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 5000 -j DNAT --to-destination 172.17.0.2:5000",
    ].join("\n");
    expect(parseForwardedPorts(rules)).toEqual([
      { protocol: "tcp", ip: "", port: 8080, forwarded: true },
      { protocol: "tcp", ip: "127.0.0.1", port: 9090, forwarded: true },
      { protocol: "udp", ip: "", port: 5353, forwarded: true },
      { protocol: "tcp", ip: "", port: 5000, forwarded: true },
    ]);
  });

  it("takes REDIRECT rules and multiport lists and ranges too", () => {
    const rules = [
      "-A PREROUTING -i eth0 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 3128",
      "-A PREROUTING -p udp -m multiport --dports 5000,6000:6002 -j DNAT --to-destination 10.0.0.2",
      "-A PREROUTING -p tcp -m multiport --dports 9000:8000 -j DNAT --to-destination 10.0.0.2",
      "-A POSTROUTING -p tcp -m tcp --dport 25 -j MASQUERADE",
    ].join("\n");
    expect(parseForwardedPorts(rules).map((b) => `${b.port}/${b.protocol}`)).toEqual([
      "80/tcp",
      "5000/udp",
      "6000/udp",
      "6001/udp",
      "6002/udp",
    ]);
  });
});

describe("reading the host's network from /proc", () => {
  it("parses the routing table, little-endian words and masks", () => {
    const text = [
      "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
      "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
      "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
      "br0\t0000590A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0",
    ].join("\n");
    expect(parseRoutes(text)).toEqual([route("0.0.0.0/0"), route("192.0.2.0/24"), route("10.89.0.0/16", "br0")]);
  });

  it("parses TCP listeners and bound UDP sockets, v4, v6 and v4-mapped", () => {
    const header = "  sl  local_address rem_address   st tx_queue rx_queue";
    const tcp = `${header}\n   0: 0100007F:1F90 00000000:0000 0A 0\n   1: 0100007F:1F91 0100007F:8000 01 0`;
    expect(parseSockets(tcp, "tcp")).toEqual([{ protocol: "tcp", ip: "127.0.0.1", port: 8080 }]);
    const tcp6 = `${header}\n 0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0\n 1: 0000000000000000FFFF00000100007F:0051 00000000000000000000000000000000:0000 0A 0`;
    expect(parseSockets(tcp6, "tcp")).toEqual([
      { protocol: "tcp", ip: "", port: 80 },
      { protocol: "tcp", ip: "127.0.0.1", port: 81 },
    ]);
    const udp = `${header}\n   0: 00000000:14E9 00000000:0000 07 0`;
    expect(parseSockets(udp, "udp")).toEqual([{ protocol: "udp", ip: "", port: 5353 }]);
  });

  it("leaves out sockets on one IPv6 address: published ports are IPv4 only, and such a socket takes none", () => {
    // [::1]:8080 and [fe80::1]:8080: a document publishing 8080 was refused for them.
    const header = "  sl  local_address rem_address   st tx_queue rx_queue";
    const tcp6 = `${header}\n 0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0\n 1: 000080FE000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0`;
    const bound = parseSockets(tcp6, "tcp");
    expect(bound).toEqual([]);
    const doc = { services: { web: { ...web, ports: ["8080:80"] } } };
    expect(codeOf(() => checkPorts(planInput(doc, { host: { routes: [], bound } })))).toBe("");
  });
});
