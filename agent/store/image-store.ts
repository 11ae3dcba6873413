/** Images: a reference names a manifest, which names a config and layers. Kept in db.json. */
import { FleetError } from "../errors.js";
import type { ImageRecord, StateDb } from "../state/db.js";

export type { ImageRecord, LayerRecord } from "../state/db.js";

export class ImageStore {
  constructor(private readonly db: StateDb) {}

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
    return Object.values(this.db.data.images).sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0));
  }

  async put(record: ImageRecord): Promise<void> {
    await this.db.update((d) => {
      d.images[record.ref] = record;
    });
  }

  /** Untags an image; its content goes at the next collection unless something else names it. */
  async remove(name: string): Promise<ImageRecord> {
    await this.db.refresh();
    const image = this.find(name);
    if (!image) throw new FleetError("E_IMAGE_NOT_FOUND", `no such image: ${name}`);
    await this.db.update((d) => {
      delete d.images[image.ref];
    });
    return image;
  }
}
