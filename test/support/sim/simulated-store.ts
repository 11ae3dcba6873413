/**
 * SIMULATED local store and registry, for fleet-scale simulation only (see
 * simulated-runtime.ts): db.json is a StateDb in memory (lowdb's Memory adapter,
 * same data shape as state/db.ts), image records live in the real ImageStore
 * on top of it, and a "pull" of any reference succeeds at once with a
 * one-layer image whose layer directory does not exist (nothing mounts it).
 */
import { createHash } from "node:crypto";
import type { AgentStore } from "../../../agent/reconcile/agent-store.js";
import { StateDb } from "../../../agent/state/db.js";
import { type ImageRecord, ImageStore } from "../../../agent/store/image-store.js";
import { Leases } from "../../../agent/store/leases.js";

/** Where simulated layers "are": a path that is never created. */
export const SIMULATED_LAYER_ROOT = "/nonexistent/fleetlet-simulated/layers";
/** The Cmd of every simulated image: runs until stopped (see simulated-runtime.ts). */
export const SIMULATED_IMAGE_CMD = ["simulated-service"];

const digestOf = (text: string) => `sha256:${createHash("sha256").update(text).digest("hex")}`;

export class SimulatedStore implements AgentStore {
  readonly db = StateDb.memory();
  readonly images = new ImageStore(this.db);
  /** Every holder counts as alive: the simulation's leases end only when released. */
  readonly leases = new Leases(this.db, { startTime: () => 1n });

  isWhole(): boolean {
    return true;
  }

  layerDirs(image: ImageRecord): string[] {
    return image.layers.map((l) => `${SIMULATED_LAYER_ROOT}/${l.chainId.slice("sha256:".length)}`).reverse();
  }

  /** The simulated registry: every reference is there and "downloads" at once. */
  async pull(ref: string, signal?: AbortSignal): Promise<ImageRecord> {
    signal?.throwIfAborted();
    const known = this.images.get(ref);
    if (known) return known;
    const layer = digestOf(`layer of ${ref}`);
    const record: ImageRecord = {
      ref,
      digest: digestOf(`manifest of ${ref}`),
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      configDigest: digestOf(`config of ${ref}`),
      layers: [
        {
          digest: layer,
          size: 0,
          mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
          diffId: layer,
          chainId: layer,
        },
      ],
      platform: "linux/amd64",
      config: { Cmd: SIMULATED_IMAGE_CMD },
      size: 0,
      pulledAt: new Date().toISOString(),
    };
    await this.images.put(record);
    return record;
  }
}
