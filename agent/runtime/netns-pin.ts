/** A container's network namespace pin (`network/<id>/ns`), as the shim's `netns add` and `netns pin` leave it. */
import { statfsSync } from "node:fs";
import { isErrno } from "../errors.js";

/** statfs(2)'s type of a namespace file (nsfs). */
const NSFS_MAGIC = 0x6e736673;

/**
 * Whether the pin holds a namespace still: after a reboot (or a crash between
 * the pin's file and its mount) it is an empty file, which the plugins' DEL
 * refuses ("unknown FS magic"); the namespace and its links are gone then,
 * and a DEL without one releases the leases.
 */
export function pinned(ns: string): boolean {
  try {
    return statfsSync(ns).type === NSFS_MAGIC;
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}
