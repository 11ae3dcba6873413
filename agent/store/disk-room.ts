/**
 * Keeps the disk reserve while a layer unpacks. The pull checks the free
 * space once before it starts, from the blobs' compressed sizes; a layer
 * can unpack to far more. So the unpacker claims every byte and inode it is
 * about to write, and every so often asks the filesystem how much is left:
 * when the next stretch of writes could eat into the reserve, the unpack
 * stops with E_NO_SPACE.
 */
import { statfsSync } from "node:fs";
import { FleetError } from "../errors.js";
import { formatMiB } from "./layer-limits.js";

/** Bytes written between two looks at the filesystem. */
const CHECK_EVERY_BYTES = 1024 * 1024;
/**
 * Room kept above the reserve at each look: the stretch until the next look,
 * for each of the (at most four) unpacks that may run at once.
 */
const MARGIN_BYTES = 4 * CHECK_EVERY_BYTES;
/** What one entry costs at least: an inode and a block. */
export const ENTRY_COST_BYTES = 4096;

export interface DiskRoomOptions {
  /** A path on the filesystem being written. */
  path: string;
  /** The state root, for the message. */
  root: string;
  reserveBytes: number;
  inodeReserve: number;
}

export class DiskRoom {
  private unchecked = 0;
  private written = 0;

  constructor(private readonly opts: DiskRoomOptions) {
    this.check();
  }

  /** Called before writing `bytes` of data. */
  claim(bytes: number): void {
    this.unchecked += bytes;
    this.written += bytes;
    if (this.unchecked >= CHECK_EVERY_BYTES) this.check();
  }

  /** Called before creating an entry. */
  claimEntry(): void {
    this.claim(ENTRY_COST_BYTES);
  }

  private check(): void {
    const st = statfsSync(this.opts.path);
    const free = st.bavail * st.bsize;
    const { reserveBytes, inodeReserve, root } = this.opts;
    if (free < reserveBytes + MARGIN_BYTES) {
      throw new FleetError(
        "E_NO_SPACE",
        `not enough disk space in ${root}: unpacking stopped after ${formatMiB(this.written)} with ${formatMiB(free)} free (${formatMiB(reserveBytes)} is kept free); the layer was refused`,
      );
    }
    // Filesystems that do not count inodes (btrfs) report none at all.
    if (st.files > 0 && st.ffree < inodeReserve + MARGIN_BYTES / ENTRY_COST_BYTES) {
      throw new FleetError(
        "E_NO_SPACE",
        `not enough inodes in ${root}: unpacking stopped with ${st.ffree} free (${inodeReserve} are kept free); the layer was refused`,
      );
    }
    this.unchecked = 0;
  }
}
