/** Images: a reference names a manifest, which names a config and layers. Kept in db.json. */
import { isDeepStrictEqual } from "node:util";
import { FleetError } from "../errors.js";
import type { ImageRecord, StateDb } from "../state/db.js";

export type { ImageRecord, LayerRecord } from "../state/db.js";

/** Whether `a` and `b` hold the same values in every field but `except`, as db.json would hold them (in any key order). */
function sameBut<T extends object>(a: T, b: T, except: keyof T): boolean {
  const rest = (r: T) => JSON.parse(JSON.stringify({ ...r, [except]: undefined })) as unknown;
  return isDeepStrictEqual(rest(a), rest(b));
}

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

  /**
   * Records an image under its reference. A record the same as the stored
   * one but for `pulledAt` (a tag resolved again to what it named) keeps the
   * stored one: `pulledAt` is when the reference came to name this content,
   * and db.json is not written for nothing. Resolves with the record kept.
   */
  put(record: ImageRecord): Promise<ImageRecord> {
    return this.db.update((d) => {
      const stored = d.images[record.ref];
      if (stored && sameBut(stored, record, "pulledAt")) return stored;
      d.images[record.ref] = record;
      return record;
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
