/** How the CLIs print results and errors. */
import { FleetError } from "../errors.js";

export function printError(prog: string, err: unknown): number {
  if (err instanceof FleetError) {
    process.stderr.write(`${prog}: ${err.message} [${err.code}]\n`);
    return err.exitCode;
  }
  const e = err as Error;
  process.stderr.write(`${prog}: ${e?.stack ?? String(err)}\n`);
  return 1;
}

/** A plain aligned text table. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ");
  return `${[line(header), ...rows.map(line)].join("\n")}\n`;
}

export function ago(iso: string | undefined, now = Date.now()): string {
  if (!iso) return "";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}
