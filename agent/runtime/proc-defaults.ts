/**
 * What a container's processes get unless the spec says otherwise, as in
 * Docker's defaults. Paths hidden from or frozen for the container: masked
 * paths become an empty tmpfs or /dev/null, read-only paths are bind-mounted
 * read-only; paths the kernel lacks are skipped by the shim. And the
 * environment's PATH, HOSTNAME and HOME, and the open-files limit.
 */
import type { ContainerSpec } from "../../schemas/container.js";

export const MASKED_PATHS = [
  "/proc/asound",
  "/proc/acpi",
  "/proc/interrupts",
  "/proc/kcore",
  "/proc/keys",
  "/proc/latency_stats",
  "/proc/timer_list",
  "/proc/timer_stats",
  "/proc/sched_debug",
  "/proc/scsi",
  "/sys/firmware",
  "/sys/devices/virtual/powercap",
];

export const READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export const DEFAULT_NOFILE = { soft: 1024, hard: 524288 };

/** The spec's environment with PATH, HOSTNAME and HOME added where it lacks them. */
export function withDefaults(spec: ContainerSpec, hostname: string): string[] {
  const env = [...spec.env];
  const has = (k: string) => env.some((e) => e.startsWith(`${k}=`));
  if (!has("PATH")) env.unshift(`PATH=${DEFAULT_PATH}`);
  if (!has("HOSTNAME")) env.push(`HOSTNAME=${hostname}`);
  if (!has("HOME")) env.push(`HOME=${spec.user.uid === 0 ? "/root" : "/"}`);
  return env;
}
