/**
 * `db.json`, through lowdb: what must survive a restart. Writes go through
 * lowdb's atomic file replacement. Each module owns its own section.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Low } from "lowdb";
import { JSONFile } from "lowdb/node";
import type { DesiredState, ServiceSpec } from "../../schemas/desired.js";
import type { ImageRecord } from "../store/image-store.js";

/** One service's current container, as the agent last left it. */
export interface ServiceRecord {
  containerId: string;
  hash: string;
  image: string;
  digest: string;
  restarts: number;
  deployment: string;
  spec: ServiceSpec;
}

export interface DbData {
  images: Record<string, ImageRecord>;
  /** The accepted desired state, persisted before anything changes. */
  desired: DesiredState | null;
  /** The last deployment that became healthy: what a rollback restores. */
  lastGood: DesiredState | null;
  /** The good deployment before lastGood: what an operator's rollback of lastGood restores. */
  previousGood: DesiredState | null;
  services: Record<string, ServiceRecord>;
  /** The highest generation accepted: older documents are ignored. */
  generation: number | null;
  /** The highest generation accepted per source ("device", "group:<name>"): each topic counts its own. */
  generations: Record<string, number>;
}

export type Db = Low<DbData>;

export async function openDb(root: string): Promise<Db> {
  mkdirSync(root, { recursive: true });
  const db = new Low<DbData>(new JSONFile<DbData>(join(root, "db.json")), { images: {}, desired: null, lastGood: null, previousGood: null, services: {}, generation: null, generations: {} });
  await db.read();
  db.data.images ??= {};
  db.data.desired ??= null;
  db.data.lastGood ??= null;
  db.data.previousGood ??= null;
  db.data.services ??= {};
  db.data.generation ??= null;
  db.data.generations ??= {};
  return db;
}
