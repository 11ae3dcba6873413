/**
 * What the agent needs of the local store and the registry, and nothing
 * more: db.json, image records, leases, and an image's layer dirs. The real
 * LocalStore satisfies it (the daemon passes one, so tsc checks it); the
 * fleet simulation passes a store that holds no content.
 */
import type { StateDb } from "../state/db.js";
import type { ImageRecord, ImageStore } from "../store/image-store.js";
import type { Lease, Leases } from "../store/leases.js";

export interface AgentStore {
  readonly db: StateDb;
  readonly images: Pick<ImageStore, "get">;
  readonly leases: Pick<Leases, "take">;
  /** Overlay lower dirs for an image, topmost first. */
  layerDirs(image: ImageRecord): string[];
  /** Every layer of the image is unpacked. */
  isWhole(image: ImageRecord): boolean;
}

/** Fetches an image into the store (resolving its tag again), its content named by `lease` from the start. */
export type PullImage = (ref: string, opts: { signal: AbortSignal; lease: Lease }) => Promise<ImageRecord>;
