/**
 * The device's image store, composed the way containerd composes it:
 * content (blobs and ingests), snapshots (unpacked layers), images (names to
 * manifests, in db.json), and garbage collection over all three.
 */
import { rmSync, statSync } from "node:fs";
import { type Db, openDb } from "../state/db.js";
import type { NativeCore } from "../system/native.js";
import { ContentStore } from "./content-store.js";
import { type ImageRecord, ImageStore } from "./image-store.js";
import { Snapshots } from "./snapshots.js";

export interface PruneResult {
  blobs: number;
  snapshots: number;
  partials: number;
  bytes: number;
}

export class LocalStore {
  private constructor(
    readonly root: string,
    readonly db: Db,
    readonly content: ContentStore,
    readonly snapshots: Snapshots,
    readonly images: ImageStore,
  ) {}

  static async open(root: string, native: NativeCore): Promise<LocalStore> {
    const db = await openDb(root);
    return new LocalStore(root, db, new ContentStore(root, native), new Snapshots(root, native), new ImageStore(db));
  }

  /** Overlay lower dirs for an image, topmost first. */
  layerDirs(image: ImageRecord): string[] {
    return image.layers.map((l) => this.snapshots.path(l.chainId)).reverse();
  }

  /**
   * Removes blobs, snapshots and partial downloads that no image references
   * and no container uses. `inUseDirs` are the layer dirs of existing
   * containers (their specs name them).
   */
  async prune(inUseDirs: Set<string>, opts: { partials?: boolean } = {}): Promise<PruneResult> {
    const blobs = new Set<string>();
    const chains = new Set<string>();
    for (const image of this.images.list()) {
      blobs.add(image.digest);
      blobs.add(image.configDigest);
      if (image.indexDigest) blobs.add(image.indexDigest);
      for (const l of image.layers) {
        blobs.add(l.digest);
        chains.add(l.chainId);
      }
    }
    const result: PruneResult = { blobs: 0, snapshots: 0, partials: 0, bytes: 0 };
    for (const chain of this.snapshots.list()) {
      if (chains.has(chain) || inUseDirs.has(this.snapshots.path(chain))) continue;
      await this.snapshots.remove(chain);
      result.snapshots++;
    }
    for (const digest of this.content.list()) {
      if (blobs.has(digest)) continue;
      result.bytes += this.content.size(digest);
      this.content.delete(digest);
      result.blobs++;
    }
    if (opts.partials !== false) {
      for (const [digest, path] of this.content.partials()) {
        // A partial another process is downloading right now stays.
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
    result.snapshots += await this.snapshots.sweep();
    return result;
  }
}
