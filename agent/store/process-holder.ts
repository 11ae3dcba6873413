/**
 * A process named for good: its pid and its start time (clock ticks since
 * boot). A pid alone is reused by the kernel; the pair is not, so a lock, a
 * lease or a temp dir that names its holder this way can be recognised as
 * abandoned once the holder is gone.
 */
import type { NativeCore } from "../system/native.js";

export interface Holder {
  pid: number;
  startTime: string;
}

export type HolderCheck = Pick<NativeCore, "startTime">;

export function currentHolder(native: HolderCheck): Holder {
  return { pid: process.pid, startTime: String(native.startTime(process.pid) ?? 0) };
}

export function holderAlive(native: HolderCheck, holder: Holder): boolean {
  return String(native.startTime(holder.pid) ?? "") === holder.startTime;
}

/** The holder as a file name part: `<pid>-<start time>`. */
export function holderTag(holder: Holder): string {
  return `${holder.pid}-${holder.startTime}`;
}

/** The holder a name made with holderTag carries after `prefix`, or undefined for another name. */
export function holderInName(name: string, prefix: string): Holder | undefined {
  const m = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(\\d+)-(\\d+)-`).exec(name);
  return m ? { pid: Number(m[1]), startTime: m[2]! } : undefined;
}
