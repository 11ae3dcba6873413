/** Reads a container's output back from its size-rotated log files. */
import { readFileSync } from "node:fs";
import { isErrno } from "../errors.js";

function readIfPresent(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return Buffer.alloc(0); // that generation was never written or has rotated away
    throw err;
  }
}

/** The whole retained log, oldest generation first, or its last `tail` lines. */
export function readLog(path: string, keep: number, tail?: number): string {
  const parts: Buffer[] = [];
  for (let i = keep; i >= 1; i--) parts.push(readIfPresent(`${path}.${i}`));
  parts.push(readIfPresent(path));
  const text = Buffer.concat(parts).toString("utf8");
  if (tail === undefined) return text;
  if (tail <= 0) return "";
  const lines = text.split("\n");
  const trailing = lines.at(-1) === "" ? lines.pop() : undefined;
  const kept = lines.slice(-tail).join("\n");
  return trailing === undefined ? kept : `${kept}\n`;
}
