/**
 * The device's image store, composed the way containerd composes it:
 * content (blobs and ingests), snapshots (unpacked layers), images (names to
 * manifests, in db.json), leases (what a pull or an apply is using), and
 * garbage collection over all of them.
 *
 * Collection decides and hides under db.json's lock, so it sees every image
 * record and every lease as they stand, and no pull can add one half-way
 * through; erasing the hidden snapshots happens after, outside the lock.
 */
import { rmSync, statSync } from "node:fs";
import { StateDb } from "../state/db.js";
import type { NativeCore } from "../system/native.js";
import { ContentStore } from "./content-store.js";
import { type ImageRecord, ImageStore } from "./image-store.js";
import { type LeasedContent, Leases } from "./leases.js";
import { Snapshots } from "./snapshots.js";

export interface PruneResult {
  blobs: number;
  snapshots: number;
  partials: number;
  bytes: number;
  /** Leases whose holder had died. */
  expiredLeases: number;
}

export interface PruneOptions {
  /** false: keep partial downloads (rmi keeps them; prune removes them). */
  partials?: boolean;
  /** The layer dirs existing containers use; read under the lock, so a container created meanwhile counts. */
  inUse: () => Set<string>;
}

/** Everything an image record names: its manifest, config and index, its layer blobs and snapshots. */
export function imageContent(image: ImageRecord): Required<LeasedContent> {
  const blobs = [image.digest, image.configDigest, ...(image.indexDigest ? [image.indexDigest] : [])];
  return { blobs: [...blobs, ...image.layers.map((l) => l.digest)], snapshots: image.layers.map((l) => l.chainId) };
}

export class LocalStore {
  readonly leases: Leases;

  private constructor(
    readonly root: string,
    readonly db: StateDb,
    readonly content: ContentStore,
    readonly snapshots: Snapshots,
    readonly images: ImageStore,
    native: NativeCore,
  ) {
    this.leases = new Leases(db, native);
  }

  static async open(root: string, native: NativeCore): Promise<LocalStore> {
    const db = await StateDb.open(root, native);
    return new LocalStore(
      root,
      db,
      new ContentStore(root, native),
      new Snapshots(root, native),
      new ImageStore(db),
      native,
    );
  }

  /** Overlay lower dirs for an image, topmost first. */
  layerDirs(image: ImageRecord): string[] {
    return image.layers.map((l) => this.snapshots.path(l.chainId)).reverse();
  }

  /** Every layer of the image is unpacked. */
  isWhole(image: ImageRecord): boolean {
    return image.layers.every((l) => this.snapshots.has(l.chainId));
  }

  /**
   * Removes blobs, snapshots and partial downloads that no image record, no
   * live lease and no container names, and what dead processes left half done.
   */
  async prune(opts: PruneOptions): Promise<PruneResult> {
    const result: PruneResult = { blobs: 0, snapshots: 0, partials: 0, bytes: 0, expiredLeases: 0 };
    const doomed = await this.db.update((d) => {
      const live = this.leases.collectLive(d);
      result.expiredLeases = live.expired;
      const blobs = live.blobs;
      const chains = live.snapshots;
      for (const image of Object.values(d.images)) {
        const named = imageContent(image);
        for (const b of named.blobs) blobs.add(b);
        for (const s of named.snapshots) chains.add(s);
      }
      const hidden = this.hideSnapshots(chains, opts.inUse());
      result.snapshots = hidden.length;
      this.deleteBlobs(blobs, result);
      if (opts.partials !== false) this.deletePartials(blobs, result);
      return [...hidden, ...this.snapshots.abandoned()];
    });
    for (const dir of doomed) await this.snapshots.erase(dir);
    return result;
  }

  private hideSnapshots(keep: Set<string>, inUseDirs: Set<string>): string[] {
    const hidden: string[] = [];
    for (const chain of this.snapshots.list()) {
      if (keep.has(chain) || inUseDirs.has(this.snapshots.path(chain))) continue;
      const dir = this.snapshots.hide(chain);
      if (dir) hidden.push(dir);
    }
    return hidden;
  }

  private deleteBlobs(keep: Set<string>, result: PruneResult): void {
    for (const digest of this.content.list()) {
      if (keep.has(digest)) continue;
      result.bytes += this.content.size(digest);
      this.content.delete(digest);
      result.blobs++;
    }
  }

  /** Partial downloads nothing leases; one another process is writing right now stays too. */
  private deletePartials(leased: Set<string>, result: PruneResult): void {
    for (const [digest, path] of this.content.partials()) {
      if (leased.has(digest)) continue;
      const release = this.content.tryLockIngest(digest);
      if (!release) continue;
      try {
        result.bytes += statSync(path).size;
        rmSync(path, { force: true });
        result.partials++;
      } finally {
        release();
      }
    }
  }
}
