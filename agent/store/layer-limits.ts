/**
 * What one layer may cost the device, in one place: the unpacker, the tar
 * reader and the pull's disk check take their limits from here. A layer
 * past a limit is refused with E_LAYER_LIMIT naming the limit and the layer
 * (E_NO_SPACE for the disk), and its half-made snapshot is removed.
 *
 * The numbers are generous for real images (a large node_modules layer has
 * around 100,000 entries; gzip shrinks ordinary files 2 to 10 times) and
 * small enough that a hostile one cannot fill the disk or the memory of a
 * device with 512 MiB of RAM.
 */

export interface LayerLimits {
  /** Decompressed bytes may be at most this many times the compressed blob... */
  maxRatio: number;
  /** ...plus this much, for small layers, whose tar headers outweigh their data... */
  ratioAllowanceBytes: number;
  /** ...and never more than this, whatever the blob's size. */
  maxBytes: number;
  /** Entries (files, directories, links, whiteouts) in one layer. */
  maxEntries: number;
  /** The body of one extended header (pax, pax global, GNU long name or link). */
  maxExtendedHeaderBytes: number;
  /** Extended headers in a row before one entry. */
  maxExtendedHeadersPerEntry: number;
  /** Global pax headers in one layer (each applies to every entry after it)... */
  maxGlobalHeaders: number;
  /** ...and the records they hold in all, which every entry is read against. */
  maxGlobalRecords: number;
  /** Free space left on the state root's filesystem: checked before a pull and kept while layers unpack. */
  diskReserveBytes: number;
  /** Free inodes left, where the filesystem counts them. */
  inodeReserve: number;
}

const MiB = 1024 * 1024;

export const DEFAULT_LAYER_LIMITS: Readonly<LayerLimits> = Object.freeze({
  maxRatio: 100,
  ratioAllowanceBytes: 16 * MiB,
  maxBytes: 16 * 1024 * MiB,
  maxEntries: 250_000,
  maxExtendedHeaderBytes: 256 * 1024,
  maxExtendedHeadersPerEntry: 8,
  maxGlobalHeaders: 16,
  maxGlobalRecords: 64,
  diskReserveBytes: 64 * MiB,
  inodeReserve: 4096,
});

/** The most a layer whose blob is `compressedBytes` may decompress to. */
export function maxDecompressedBytes(limits: LayerLimits, compressedBytes: number | undefined): number {
  if (compressedBytes === undefined) return limits.maxBytes;
  return Math.min(limits.maxBytes, compressedBytes * limits.maxRatio + limits.ratioAllowanceBytes);
}

export function formatMiB(bytes: number): string {
  return bytes < MiB ? `${Math.ceil(bytes / 1024)} KiB` : `${Math.ceil(bytes / MiB)} MiB`;
}
