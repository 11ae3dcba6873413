/** Signal names and numbers: "SIGTERM", "TERM", "15" all name signal 15. */
import { constants } from "node:os";
import { FleetError } from "../errors.js";

export function signalNumber(signal: string | number): number {
  if (typeof signal === "number") return signal;
  if (/^\d+$/.test(signal)) return Number(signal);
  const name = signal.toUpperCase().startsWith("SIG") ? signal.toUpperCase() : `SIG${signal.toUpperCase()}`;
  const n = (constants.signals as Record<string, number>)[name];
  if (n === undefined) throw new FleetError("E_INVALID_ARGUMENT", `signal: unknown signal "${signal}"`);
  return n;
}

export function signalName(n: number): string {
  const entry = Object.entries(constants.signals).find(([, v]) => v === n);
  return entry ? entry[0] : `signal ${n}`;
}
