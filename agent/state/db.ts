/**
 * `db.json`, through lowdb: what must survive a restart. Writes go through
 * lowdb's atomic file replacement. Each module owns its own section.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { open, readFile, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { type Adapter, Low } from "lowdb";
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
  /** Where the accepted desired state came from: "device" or "group:<name>". */
  desiredSource: string | null;
}

export type Db = Low<DbData>;

/**
 * db.json written whole or not at all: to a temp file of this process's own
 * (the agent and a `fleetlet pull` may write at the same moment; lowdb's own
 * adapter shares one temp name between processes), then renamed over.
 */
class AtomicJsonFile<T> implements Adapter<T> {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly file: string) {}

  async read(): Promise<T | null> {
    try {
      return JSON.parse(await readFile(this.file, "utf8")) as T;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
  }

  /** Writes go out in call order, so the last one called is the one on disk. */
  write(data: T): Promise<void> {
    const text = JSON.stringify(data, null, 2);
    const done = this.queue.then(() => this.replace(text));
    this.queue = done.catch(() => undefined); // the caller of this write gets its error
    return done;
  }

  private async replace(text: string): Promise<void> {
    const tmp = join(
      dirname(this.file),
      `.${basename(this.file)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`,
    );
    const fh = await open(tmp, "w", 0o600);
    try {
      // No fsync per write, as lowdb's own adapter: ext4 (auto_da_alloc) flushes a
      // file replaced by rename before the rename, and the agent writes often.
      await fh.writeFile(text);
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, this.file);
    } catch (err) {
      await unlink(tmp).catch(() => undefined); // the rename's error is the one that matters
      throw err;
    }
  }
}

export async function openDb(root: string): Promise<Db> {
  mkdirSync(root, { recursive: true });
  const db = new Low<DbData>(new AtomicJsonFile<DbData>(join(root, "db.json")), {
    images: {},
    desired: null,
    lastGood: null,
    previousGood: null,
    services: {},
    generation: null,
    generations: {},
    desiredSource: null,
  });
  await db.read();
  db.data.images ??= {};
  db.data.desired ??= null;
  db.data.lastGood ??= null;
  db.data.previousGood ??= null;
  db.data.services ??= {};
  db.data.generation ??= null;
  db.data.generations ??= {};
  db.data.desiredSource ??= null;
  return db;
}
