/** Linux capability names and the default set a container keeps. */
import { FleetError } from "../errors.js";

const CAPABILITIES = [
  "CHOWN",
  "DAC_OVERRIDE",
  "DAC_READ_SEARCH",
  "FOWNER",
  "FSETID",
  "KILL",
  "SETGID",
  "SETUID",
  "SETPCAP",
  "LINUX_IMMUTABLE",
  "NET_BIND_SERVICE",
  "NET_BROADCAST",
  "NET_ADMIN",
  "NET_RAW",
  "IPC_LOCK",
  "IPC_OWNER",
  "SYS_MODULE",
  "SYS_RAWIO",
  "SYS_CHROOT",
  "SYS_PTRACE",
  "SYS_PACCT",
  "SYS_ADMIN",
  "SYS_BOOT",
  "SYS_NICE",
  "SYS_RESOURCE",
  "SYS_TIME",
  "SYS_TTY_CONFIG",
  "MKNOD",
  "LEASE",
  "AUDIT_WRITE",
  "AUDIT_CONTROL",
  "SETFCAP",
  "MAC_OVERRIDE",
  "MAC_ADMIN",
  "SYSLOG",
  "WAKE_ALARM",
  "BLOCK_SUSPEND",
  "AUDIT_READ",
  "PERFMON",
  "BPF",
  "CHECKPOINT_RESTORE",
] as const;

/** podman's default set of eleven. */
export const DEFAULT_CAPABILITIES = [
  "CHOWN",
  "DAC_OVERRIDE",
  "FOWNER",
  "FSETID",
  "KILL",
  "NET_BIND_SERVICE",
  "SETFCAP",
  "SETGID",
  "SETPCAP",
  "SETUID",
  "SYS_CHROOT",
];

function normalize(name: string, field: string): string {
  const upper = name.toUpperCase().replace(/^CAP_/, "");
  if (upper === "ALL") return upper;
  if (!(CAPABILITIES as readonly string[]).includes(upper)) {
    throw new FleetError("E_INVALID_ARGUMENT", `${field}: unknown capability "${name}"`, { exitCode: 125 });
  }
  return upper;
}

/** The capability numbers a container keeps after --cap-add and --cap-drop ("ALL" works in both). */
export function capabilitySet(add: string[], drop: string[]): number[] {
  const set = new Set(DEFAULT_CAPABILITIES);
  for (const d of drop.map((n) => normalize(n, "capDrop"))) {
    if (d === "ALL") set.clear();
    else set.delete(d);
  }
  for (const a of add.map((n) => normalize(n, "capAdd"))) {
    if (a === "ALL") for (const c of CAPABILITIES) set.add(c);
    else set.add(a);
  }
  return [...set].map((n) => (CAPABILITIES as readonly string[]).indexOf(n)).sort((a, b) => a - b);
}
