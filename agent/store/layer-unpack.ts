/**
 * Unpacks one layer into an empty directory, streaming: decompress, hash
 * the tar (the diff id), and write entries as they come (layer-writer.ts).
 *
 * Every cost is bounded by layer-limits.ts: decompressed bytes (against a
 * gzip bomb: a multiple of the blob's size, and an absolute cap), entries,
 * extended headers (in the tar reader), and the disk's free space and
 * inodes, claimed as they are written (disk-room.ts). Whatever goes wrong,
 * the error is a FleetError that starts with the layer's name, and the
 * caller removes the half-written directory.
 */
import { pipeline, type Readable, Transform } from "node:stream";
import { createGunzip, createZstdDecompress } from "node:zlib";
import { errnoName, FleetError } from "../errors.js";
import type { NativeCore } from "../system/native.js";
import { DiffHash } from "./diff-hash.js";
import { DiskRoom } from "./disk-room.js";
import { DEFAULT_LAYER_LIMITS, formatMiB, type LayerLimits, maxDecompressedBytes } from "./layer-limits.js";
import { LayerWriter } from "./layer-writer.js";
import { readTar, type TarHeader } from "./tar-reader.js";
import { XattrDrops } from "./xattr-policy.js";

export { safeRelativePath } from "./layer-writer.js";

export interface UnpackResult {
  diffId: string;
  entries: number;
  bytes: number;
}

export interface UnpackOptions {
  dest: string;
  mediaType: string;
  native: NativeCore;
  signal?: AbortSignal;
  /** The layer's name in messages (its blob digest). */
  layer?: string;
  /** The blob's size, which bounds what it may decompress to. */
  compressedSize?: number;
  /** The state root (the filesystem whose free space is kept), for messages; `dest` by default. */
  root?: string;
  limits?: Partial<LayerLimits>;
  /** Warnings that do not stop the unpack (dropped xattrs). */
  onWarning?: (message: string) => void;
}

export type LayerCompression = "gzip" | "zstd" | "none";

export function layerCompression(mediaType: string): LayerCompression {
  if (/tar\+gzip$|tar\.gzip$|diff\.tar\.gzip$/.test(mediaType) || mediaType.endsWith(".tar.gzip")) return "gzip";
  if (mediaType.endsWith("tar+zstd")) return "zstd";
  if (/\.tar$|layer\.v1\.tar$|rootfs\.diff\.tar$/.test(mediaType)) return "none";
  throw new FleetError("E_UNSUPPORTED", `layer media type ${mediaType} is not one fleetlet knows how to unpack`);
}

/** The decompressor for a layer's blob, if it is compressed. */
function decompressor(compression: LayerCompression): NodeJS.ReadWriteStream[] {
  if (compression === "gzip") return [createGunzip({ chunkSize: 256 * 1024 })];
  if (compression === "zstd") return [createZstdDecompress({ chunkSize: 256 * 1024 })];
  return [];
}

/** The tar's bytes as they come out of the decompressor: hashed, and counted against the cap. */
function tarTap(hash: DiffHash, cap: number, why: () => string): Transform {
  let total = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      total += chunk.length;
      if (total > cap) return cb(new FleetError("E_LAYER_LIMIT", why()));
      const behind = hash.update(chunk);
      if (!behind) return cb(null, chunk);
      behind.then(() => cb(null, chunk), cb);
    },
  });
}

/**
 * Errors of the layer's own making, or of the disk, as FleetErrors naming
 * the layer (and the entry being written, when `writing`). An error from
 * reading the blob itself passes as it is.
 */
function layerError(err: unknown, layer: string, entry: TarHeader | undefined, writing: boolean): unknown {
  const name = `layer ${layer}`;
  if (err instanceof FleetError)
    return new FleetError(err.code, `${name}: ${err.message}`, { cause: err, exitCode: err.exitCode });
  const zlib = (err as NodeJS.ErrnoException).code;
  if (typeof zlib === "string" && (zlib.startsWith("Z_") || zlib.startsWith("ZSTD_")))
    return new FleetError("E_UNSAFE_LAYER", `${name} cannot be decompressed: ${(err as Error).message}`, {
      cause: err,
    });
  const code = errnoName(err);
  if (!code || !writing) return err; // not the layer, not the disk: its own stack says where
  const what = entry ? `entry "${entry.name}"` : "the layer directory";
  if (code === "ENOSPC" || code === "EDQUOT")
    return new FleetError("E_NO_SPACE", `${name}: ${what}: the disk is full (${code})`, { cause: err });
  return new FleetError(
    "E_UNSAFE_LAYER",
    `${name}: ${what} cannot be written: ${(err as Error).message}; the layer was refused`,
    { cause: err },
  );
}

/**
 * Unpacks `source` (the blob's bytes) into `dest`, which must exist and be
 * empty. Resolves with the diff id: the sha256 of the uncompressed tar.
 */
export async function unpackLayer(source: Readable, opts: UnpackOptions): Promise<UnpackResult> {
  const compression = layerCompression(opts.mediaType);
  const limits: LayerLimits = { ...DEFAULT_LAYER_LIMITS, ...opts.limits };
  const layer = opts.layer ?? "(unnamed)";
  const cap = maxDecompressedBytes(limits, compression !== "none" ? opts.compressedSize : undefined);
  const hash = new DiffHash(opts.native);
  const tap = tarTap(
    hash,
    cap,
    () =>
      `decompresses to more than ${formatMiB(cap)}, the most a layer of ${
        opts.compressedSize === undefined ? "any size" : formatMiB(opts.compressedSize)
      } may hold (${limits.maxRatio} times its size plus ${formatMiB(limits.ratioAllowanceBytes)}, at most ${formatMiB(limits.maxBytes)}); the layer was refused`,
  );
  // pipeline() carries an error from any stage to the last, where the reader sees it.
  const stages: NodeJS.ReadWriteStream[] = [...decompressor(compression), tap];
  pipeline(source, ...(stages as [NodeJS.ReadWriteStream]), () => {
    // errors surface through the iteration of `tap` below
  });
  let current: TarHeader | undefined;
  let writer: LayerWriter | undefined;
  let writing = true;
  const xattrs = new XattrDrops((m) => opts.onWarning?.(`layer ${layer}: ${m}`));
  try {
    const disk = new DiskRoom({
      path: opts.dest,
      root: opts.root ?? opts.dest,
      reserveBytes: limits.diskReserveBytes,
      inodeReserve: limits.inodeReserve,
    });
    writer = new LayerWriter({ dest: opts.dest, native: opts.native, limits, disk, xattrs });
    writing = false;
    for await (const ev of readTar(tap, limits)) {
      opts.signal?.throwIfAborted();
      writing = true;
      if (ev.kind === "header") {
        current = ev.header;
        await writer.begin(ev.header);
      } else if (ev.kind === "data") await writer.data(ev.chunk);
      else await writer.end(current!);
      writing = false;
    }
    writing = true;
    writer.close();
  } catch (err) {
    await writer?.abort();
    tap.destroy();
    await hash.settle();
    if (opts.signal?.aborted && err === opts.signal.reason) throw err;
    throw layerError(err, layer, current, writing);
  }
  xattrs.summarize();
  return { diffId: await hash.digest(), entries: writer!.entries, bytes: writer!.bytes };
}
