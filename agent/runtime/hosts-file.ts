/**
 * The name files a container on a bridge gets, bind-mounted read-only:
 * /etc/hosts (itself and its peers by service name, rewritten in place when
 * peers change, so the bind mount sees the new content) and /etc/resolv.conf
 * (the host's, less the loopback nameservers, which mean nothing inside).
 */
import { closeSync, constants, fstatSync, ftruncateSync, openSync, readFileSync, readSync, writeSync } from "node:fs";
import { isErrno } from "../errors.js";

export interface HostsEntry {
  address: string;
  names: string[];
}

export function hostsContent(self: HostsEntry[], peers: HostsEntry[]): string {
  const lines = [
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    ...self.map((e) => `${e.address}\t${e.names.join(" ")}`),
    ...peers.map((e) => `${e.address}\t${e.names.join(" ")}`),
  ];
  return `${lines.join("\n")}\n`;
}

/**
 * Overwrites the file's content without replacing the file: a bind mount of
 * it sees the change. The new content is written over the old before the
 * file is cut to its length, so a resolver reading it meanwhile never finds
 * it empty (as it could between a truncate and the write). A file that
 * holds the content already is not written: each service's start refreshes
 * the peers of every service on its networks, and most of them are as they were.
 */
export function rewriteInPlace(path: string, content: string): void {
  const data = Buffer.from(content);
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o644);
  try {
    if (fstatSync(fd).size === data.length) {
      const held = Buffer.alloc(data.length);
      if (readSync(fd, held, 0, held.length, 0) === held.length && held.equals(data)) return;
    }
    let done = 0;
    while (done < data.length) done += writeSync(fd, data, done, data.length - done, done);
    ftruncateSync(fd, data.length);
  } finally {
    closeSync(fd);
  }
}

const isLoopback = (ns: string) => ns.startsWith("127.") || ns === "::1";

/**
 * The host's resolv.conf for a container: nameservers on loopback (a local
 * stub such as systemd-resolved's 127.0.0.53) are replaced by the stub's
 * upstream servers when `upstream` (systemd's /run/systemd/resolve/resolv.conf)
 * names some, and otherwise dropped, which the file says.
 */
export function containerResolvConf(host: string, upstream: string | undefined): string {
  const lines = host.split("\n");
  const server = (l: string) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1];
  const dropped = lines.filter((l) => server(l) !== undefined && isLoopback(server(l)!));
  if (dropped.length === 0) return host.endsWith("\n") ? host : `${host}\n`;
  const kept = lines.filter((l) => !dropped.includes(l));
  const upstreams = (upstream ?? "")
    .split("\n")
    .map(server)
    .filter((s): s is string => s !== undefined && !isLoopback(s));
  const note = upstreams.length
    ? `# fleetlet: ${dropped.map(server).join(", ")} (loopback on the host) replaced by the host's upstream servers`
    : `# fleetlet: ${dropped.map(server).join(", ")} (loopback on the host) dropped: no upstream server known`;
  return `${[note, ...kept.filter((l) => l.trim()), ...upstreams.map((s) => `nameserver ${s}`)].join("\n")}\n`;
}

/** /etc/resolv.conf for containers: the host's, its loopback nameservers replaced or dropped. */
export function hostResolvConf(): string {
  const read = (p: string) => {
    try {
      return readFileSync(p, "utf8");
    } catch (err) {
      if (isErrno(err, "ENOENT")) return undefined;
      throw err;
    }
  };
  return containerResolvConf(read("/etc/resolv.conf") ?? "", read("/run/systemd/resolve/resolv.conf"));
}
