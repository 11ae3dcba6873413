/**
 * Unpacked layers, one directory per chain id under `layers/`: the overlay
 * lower dirs. A snapshot is unpacked into `layers/.tmp-<holder>-…` and
 * renamed into place only when it is complete and its diff id checked, so a
 * directory named by a chain id is always whole. A removed snapshot is first
 * renamed to `.removed-<holder>-…`, then erased. The holder (pid and start
 * time) in those names tells a sweep what a live process is still working on
 * from what a crash left behind.
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, renameSync } from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { FleetError, isErrno } from "../errors.js";
import type { NativeCore } from "../system/native.js";
import { PRIVATE_MODE, privateDir } from "../system/state-root.js";
import { digestHex } from "./digest.js";
import type { LayerLimits } from "./layer-limits.js";
import { unpackLayer } from "./layer-unpack.js";
import { currentHolder, holderAlive, holderInName, holderTag } from "./process-holder.js";

const TEMP_PREFIXES = [".tmp-", ".removed-"];

/** chain[0] = diff[0]; chain[i] = sha256(chain[i-1] + " " + diff[i]), per the OCI image spec. */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const diff of diffIds) {
    const prev = out.at(-1);
    out.push(prev ? `sha256:${createHash("sha256").update(`${prev} ${diff}`).digest("hex")}` : diff);
  }
  return out;
}

/** One layer to unpack: where it goes (its chain id), what its content must hash to, and its blob. */
export interface SnapshotLayer {
  chainId: string;
  diffId: string;
  mediaType: string;
  /** The blob's digest and size, for messages and for the decompressed-size cap. */
  digest?: string;
  size?: number;
}

export interface SnapshotUnpackOptions {
  signal?: AbortSignal;
  onWarning?: (message: string) => void;
  /** Tests lower them; everything else keeps layer-limits.ts's defaults. */
  limits?: Partial<LayerLimits>;
  /**
   * For an unpack fed while its blob downloads: settles once the blob is
   * committed (or rejects when it is not). The snapshot is named only after,
   * even when its tar ended before the blob did (bytes after a gzip stream).
   */
  committed?: Promise<void>;
}

export class Snapshots {
  readonly dir: string;

  constructor(
    private readonly root: string,
    private readonly native: NativeCore,
  ) {
    this.dir = join(root, "layers");
    // Root's alone (0700): a layer holds what its image put there, setuid programs included.
    privateDir(this.dir);
  }

  path(chainId: string): string {
    return join(this.dir, digestHex(chainId, "chain id"));
  }

  has(chainId: string): boolean {
    return existsSync(this.path(chainId));
  }

  /** Unpacks a layer as the snapshot `chainId`, checking that its content is `diffId`. */
  async unpack(
    layer: SnapshotLayer,
    source: Readable,
    opts: SnapshotUnpackOptions = {},
  ): Promise<{ entries: number; bytes: number }> {
    const { chainId, diffId } = layer;
    if (this.has(chainId)) return { entries: 0, bytes: 0 };
    const tmp = this.privateName(".tmp-", chainId);
    mkdirSync(tmp, PRIVATE_MODE);
    try {
      const result = await unpackLayer(source, {
        dest: tmp,
        mediaType: layer.mediaType,
        native: this.native,
        layer: layer.digest ?? diffId,
        root: this.root,
        ...(layer.size !== undefined ? { compressedSize: layer.size } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
        ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
        ...(opts.limits ? { limits: opts.limits } : {}),
      });
      if (result.diffId !== diffId) {
        throw new FleetError(
          "E_DIGEST_MISMATCH",
          `layer ${diffId}: its uncompressed content hashes to ${result.diffId}`,
        );
      }
      await opts.committed;
      try {
        renameSync(tmp, this.path(chainId));
      } catch (err) {
        // Another pull (in this process or another) finished the same snapshot first: keep theirs.
        if (!(isErrno(err, "ENOTEMPTY") || isErrno(err, "EEXIST")) || !this.has(chainId)) throw err;
        await this.native.removeTree(tmp);
      }
      return result;
    } catch (err) {
      await this.native.removeTree(tmp);
      throw err;
    }
  }

  list(): string[] {
    return readdirSync(this.dir)
      .filter((n) => /^[a-f0-9]{64}$/.test(n))
      .map((n) => `sha256:${n}`);
  }

  /** A name of this process's own under layers/: `<prefix><holder>-<chain>-<random>`. */
  private privateName(prefix: string, chainId: string): string {
    const tag = holderTag(currentHolder(this.native));
    return join(this.dir, `${prefix}${tag}-${digestHex(chainId).slice(0, 16)}-${randomBytes(4).toString("hex")}`);
  }

  /** Takes a snapshot out of sight at once (a rename); returns the dir for `erase`, or undefined if absent. */
  hide(chainId: string): string | undefined {
    const gone = this.privateName(".removed-", chainId);
    try {
      renameSync(this.path(chainId), gone);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return undefined;
      throw err;
    }
    return gone;
  }

  erase(dir: string): Promise<void> {
    return this.native.removeTree(dir);
  }

  /** Removes a snapshot: renamed out of sight first, then erased. */
  async remove(chainId: string): Promise<void> {
    const gone = this.hide(chainId);
    if (gone) await this.erase(gone);
  }

  /** Unpacks and removals that a dead process left half done (a live one's are its own business). */
  abandoned(): string[] {
    return readdirSync(this.dir)
      .filter((n) => {
        const prefix = TEMP_PREFIXES.find((p) => n.startsWith(p));
        if (!prefix) return false;
        const holder = holderInName(n, prefix);
        return holder === undefined || !holderAlive(this.native, holder);
      })
      .map((n) => join(this.dir, n));
  }
}
