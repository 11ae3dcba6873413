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

/** Each rule's `TYPE MAJOR:MINOR` and the union of the access the rules give it. */
function accessByNumbers(rules: Iterable<string>): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const rule of rules) {
    const at = rule.lastIndexOf(" ");
    const key = rule.slice(0, at);
    const access = out.get(key) ?? new Set<string>();
    for (const a of rule.slice(at + 1)) access.add(a);
    out.set(key, access);
  }
  return out;
}

/**
 * The v1 writes that take a running container from one list of device
 * rules to another (the defaults are part of both). The controller keeps
 * one entry per `TYPE MAJOR:MINOR` with the access of every allow written
 * for it, and a deny takes its access away from that entry: so a device
 * that goes denies only the access that no other device, and no default
 * rule, of the same numbers still gives.
 */
export function ruleChanges(before: Iterable<string>, now: Iterable<string>): { allow: string[]; deny: string[] } {
  const [was, is] = [
    accessByNumbers([...DEFAULT_DEVICE_RULES, ...before]),
    accessByNumbers([...DEFAULT_DEVICE_RULES, ...now]),
  ];
  const allow: string[] = [];
  const deny: string[] = [];
  const order = "rwm";
  for (const [key, access] of is) {
    const added = [...order].filter((a) => access.has(a) && !was.get(key)?.has(a)).join("");
    if (added) allow.push(`${key} ${added}`);
  }
  for (const [key, access] of was) {
    const gone = [...order].filter((a) => access.has(a) && !is.get(key)?.has(a)).join("");
    if (gone) deny.push(`${key} ${gone}`);
  }
  return { allow, deny };
}
