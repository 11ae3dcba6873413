/**
 * The shim's config file: "key=value" records separated by NUL bytes, so any
 * value but NUL passes through unchanged. Repeated keys make lists. The
 * schema has already refused NULs, and tabs in paths (the bind separator).
 */
import type { ContainerSpec } from "../../schemas/container.js";
import type { DeviceNode } from "../../schemas/device.js";
import type { Cgroups } from "./cgroup.js";
import type { ContainerPaths } from "./container-dir.js";
import type { JoinedNetwork } from "./container-network.js";
import { DEFAULT_NOFILE, MASKED_PATHS, READONLY_PATHS } from "./proc-defaults.js";

export interface ShimConfigInput {
  id: string;
  spec: ContainerSpec;
  env: string[];
  hostname: string;
  paths: ContainerPaths;
  cgroups: ReturnType<Cgroups["plan"]>;
  capabilities: number[];
  volumeDir: (name: string) => string;
  /** The host devices' nodes, made in the container's /dev. */
  devices?: DeviceNode[];
  /** List /proc/self/fd to mark descriptors close-on-exec even where close_range can (tests). */
  fdScan?: boolean;
  /** Fork the init and then move it into its cgroup v2, even where clone3 can place it at birth (tests). */
  cgroupMove?: boolean;
  /** Mount the overlay without `volatile`, even where the kernel has it (tests). */
  overlaySync?: boolean;
  /** The namespace and name files of a container on bridges (container-network.ts). */
  joined?: JoinedNetwork | undefined;
}

function networkRecords(joined: JoinedNetwork | undefined): [string, string][] {
  if (!joined) return [];
  return [
    ["netns", joined.netns],
    ["bindfile-ro", `${joined.hosts}\t/etc/hosts`],
    ["bindfile-ro", `${joined.resolvConf}\t/etc/resolv.conf`],
  ];
}

export function encodeShimConfig(c: ShimConfigInput): Buffer {
  const records: [string, string | number][] = [
    ["id", c.id],
    ["rootfs", c.paths.rootfs],
    ...c.spec.layers.map((l): [string, string] => ["lower", l]),
    ["upper", c.paths.upperFs],
    ["work", c.paths.work],
    ["hostname", c.hostname],
    ["cwd", c.spec.workingDir],
    ...c.spec.command.map((a): [string, string] => ["arg", a]),
    ...c.env.map((e): [string, string] => ["env", e]),
    ["uid", c.spec.user.uid],
    ["gid", c.spec.user.gid],
    ...c.spec.user.groups.map((g): [string, number] => ["group", g]),
    ...c.capabilities.map((n): [string, number] => ["cap", n]),
    ["net", c.spec.network],
    ...networkRecords(c.joined),
    ["readonly", c.spec.readOnlyRootfs ? 1 : 0],
    ["seccomp", c.spec.seccomp],
    ...c.spec.volumes.map((v): [string, string] => [
      v.readOnly ? "bind-ro" : "bind",
      `${c.volumeDir(v.name)}\t${v.target}`,
    ]),
    ...(c.devices ?? []).map((d): [string, string] => [
      "devnode",
      [d.target, d.type, d.major, d.minor, d.mode, d.uid, d.gid].join("\t"),
    ]),
    ...MASKED_PATHS.map((p): [string, string] => ["mask", p]),
    ...READONLY_PATHS.map((p): [string, string] => ["ropath", p]),
    ...[...new Set(c.cgroups.dirs.values())].map((d): [string, string] => ["cgroup", d]),
    ...c.cgroups.writes.map((w): [string, string] => [w.optional ? "cglimit-opt" : "cglimit", `${w.file}\t${w.value}`]),
    ...(c.cgroups.oomFile ? [["oom", c.cgroups.oomFile] as [string, string]] : []),
    ...(c.cgroups.devices ? [["devcgroup", c.cgroups.devices.dir] as [string, string]] : []),
    ...(c.cgroups.devices?.rules ?? []).map((r): [string, string] => ["device", r]),
    ...(c.fdScan ? [["fdscan", 1] as [string, number]] : []),
    ...(c.cgroupMove ? [["cgroup-move", 1] as [string, number]] : []),
    ...(c.overlaySync ? [["overlay-sync", 1] as [string, number]] : []),
    ...(c.spec.init ? [["init", 1] as [string, number]] : []),
    ["log", c.paths.log],
    ["logmax", c.spec.log.maxBytes],
    ["logkeep", c.spec.log.keep],
    ["exit", c.paths.exit],
    ["running", c.paths.running],
    ["nofile-soft", DEFAULT_NOFILE.soft],
    ["nofile-hard", DEFAULT_NOFILE.hard],
  ];
  return Buffer.from(records.map(([k, v]) => `${k}=${v}\0`).join(""));
}
