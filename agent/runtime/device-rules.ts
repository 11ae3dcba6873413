/**
 * The devices a container may use, in the devices cgroup's own syntax
 * (`TYPE MAJOR:MINOR ACCESS`, `*` for any number; r read, w write, m mknod).
 * Everything else is refused with EPERM, even to a root with CAP_MKNOD:
 * like Docker, any node may be made, but only these opened. The one list
 * becomes `devices.allow` writes on cgroup v1 and hybrid hosts, and the shim's
 * BPF device program on cgroup v2. Pure, so the mapping is tested without a
 * kernel.
 */
import type { CgroupMode } from "../../schemas/container.js";
import type { DeviceNode } from "../../schemas/device.js";
import type { CgroupWrite } from "./cgroup-limits.js";

export const DEFAULT_DEVICE_RULES: readonly string[] = [
  "c *:* m", // mknod of any character node (opening it is still refused)
  "b *:* m", // and of any block node
  "c 1:3 rwm", // /dev/null
  "c 1:5 rwm", // /dev/zero
  "c 1:7 rwm", // /dev/full
  "c 1:8 rwm", // /dev/random
  "c 1:9 rwm", // /dev/urandom
  "c 5:0 rwm", // /dev/tty
  "c 5:2 rwm", // /dev/ptmx (the container's own devpts instance)
  "c 136:* rwm", // /dev/pts/N
];

/**
 * v1 and hybrid: deny everything, then allow the list, in the container's
 * devices cgroup, before the init joins it. v2 has no such files: the
 * rules go to the shim, which attaches a BPF program (see Cgroups.plan).
 */
export function deviceWrites(mode: CgroupMode, rules: readonly string[] = DEFAULT_DEVICE_RULES): CgroupWrite[] {
  if (mode === "v2") return [];
  return [
    { hierarchy: "devices", file: "devices.deny", value: "a" },
    ...rules.map((value) => ({ hierarchy: "devices", file: "devices.allow", value })),
  ];
}

/** The rule that lets a container use one host device: "c 188:0 rw". */
export function deviceRule(node: Pick<DeviceNode, "type" | "major" | "minor" | "permissions">): string {
  return `${node.type} ${node.major}:${node.minor} ${node.permissions}`;
}
