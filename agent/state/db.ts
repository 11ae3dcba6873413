/**
 * `db.json`, through lowdb: what must survive a restart. Writes go through
 * lowdb's atomic file replacement. Each module owns its own section.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Low } from "lowdb";
import { JSONFile } from "lowdb/node";
import type { ImageRecord } from "../store/image-store.js";

export interface DbData {
  images: Record<string, ImageRecord>;
}

export type Db = Low<DbData>;

export async function openDb(root: string): Promise<Db> {
  mkdirSync(root, { recursive: true });
  const db = new Low<DbData>(new JSONFile<DbData>(join(root, "db.json")), { images: {} });
  await db.read();
  db.data.images ??= {};
  return db;
}
