/**
 * The few node:fs calls the daemon makes all the time (db.json, locks), as
 * promises over node:fs's callbacks rather than from node:fs/promises: that
 * module loads Node's readline and REPL history with it (for FileHandle's
 * readLines), some 1 MiB resident in a process that needs neither.
 */
import { close, open, readFile, rename, stat, unlink, writeFile } from "node:fs";
import { promisify } from "node:util";

export const openFd: (path: string, flags: string, mode?: number) => Promise<number> = promisify(open);
export const closeFd: (fd: number) => Promise<void> = promisify(close);
export const readText: (path: string, encoding: "utf8") => Promise<string> = promisify(readFile);
export const writeFd: (fd: number, data: string) => Promise<void> = promisify(writeFile);
export const renamePath: (from: string, to: string) => Promise<void> = promisify(rename);
export const unlinkPath: (path: string) => Promise<void> = promisify(unlink);
export const statBig: (path: string, opts: { bigint: true }) => Promise<import("node:fs").BigIntStats> =
  promisify(stat);
