/** Images: a reference names a manifest, which names a config and layers. Kept in db.json. */

import { FleetError } from "../errors.js";
import type { Db } from "../state/db.js";

export interface LayerRecord {
  digest: string;
  size: number;
  mediaType: string;
  diffId: string;
  chainId: string;
}

export interface ImageRecord {
  ref: string;
  digest: string; // the manifest's
  mediaType: string;
  /** The index (or manifest list) the manifest was picked from. */
  indexDigest?: string | undefined;
  configDigest: string;
  layers: LayerRecord[];
  platform: string;
  config: {
    Entrypoint?: string[] | null | undefined;
    Cmd?: string[] | null | undefined;
    Env?: string[] | null | undefined;
    WorkingDir?: string | null | undefined;
    User?: string | null | undefined;
    StopSignal?: string | null | undefined;
  };
  size: number;
  pulledAt: string;
}

export class ImageStore {
  constructor(private readonly db: Db) {}

  get(ref: string): ImageRecord | undefined {
    return this.db.data.images[ref];
  }

  /** By reference, or by (a prefix of) the manifest digest. */
  find(name: string): ImageRecord | undefined {
    const direct = this.db.data.images[name];
    if (direct) return direct;
    const hex = name.replace(/^sha256:/, "");
    if (hex.length >= 12) return Object.values(this.db.data.images).find((i) => i.digest.slice(7).startsWith(hex));
    return undefined;
  }

  list(): ImageRecord[] {
    return Object.values(this.db.data.images).sort((a, b) => a.ref.localeCompare(b.ref));
  }

  async put(record: ImageRecord): Promise<void> {
    this.db.data.images[record.ref] = record;
    await this.db.write();
  }

  async remove(name: string): Promise<ImageRecord> {
    const image = this.find(name);
    if (!image) throw new FleetError("E_IMAGE_NOT_FOUND", `no such image: ${name}`);
    delete this.db.data.images[image.ref];
    await this.db.write();
    return image;
  }
}
