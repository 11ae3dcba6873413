/**
 * `db.json`, through lowdb: what must survive a restart. The agent and any
 * number of `fleetlet` commands share it, so every change is a
 * read-modify-write under one lock: `update()` takes an exclusive flock on
 * `db.json.lock`, re-reads the file (unless this process wrote it last),
 * applies the change and replaces the file whole. A process killed while it
 * holds the lock loses it with its last descriptor, so nothing waits on a
 * dead writer. `data` is the last state read or written: callers that need
 * another process's latest changes call `refresh()` first.
 */
import { randomBytes } from "node:crypto";
import { basename, dirname, join } from "node:path";
import { type Adapter, Low, Memory } from "lowdb";
import { type DbData, dbData } from "../../schemas/db.js";
import { formatIssues } from "../../schemas/format-issues.js";
import { FleetError } from "../errors.js";
import { FlockLock } from "../system/flock-lock.js";
import type { NativeCore } from "../system/native.js";
import { closeFd, openFd, readText, renamePath, statBig, unlinkPath, writeFd } from "../system/promised-fs.js";
import { secureStateRoot, type Warn } from "../system/state-root.js";

export type { DbData, ImageRecord, LayerRecord, LeaseRecord, ServiceRecord } from "../../schemas/db.js";
/** db.json's lock: flock on `db.json.lock`, polled without blocking the event loop. */
export { FlockLock } from "../system/flock-lock.js";

/** How writers take turns: an exclusive lock across processes, released by the returned function. */
export interface WriterLock {
  acquire(): Promise<() => Promise<void>>;
}

/** Identifies a version of the file on disk, so a writer can tell whether anyone else wrote since. */
type FileVersion = string | null;

export function emptyDbData(): DbData {
  return {
    images: {},
    desired: null,
    lastGood: null,
    previousGood: null,
    services: {},
    generation: null,
    generations: {},
    desiredSource: null,
    leases: {},
  };
}

/** Sections a file written by an older agent may lack, filled in. */
function complete(data: Partial<DbData> | null): DbData {
  return { ...emptyDbData(), ...(data ?? {}) };
}

/**
 * db.json written whole or not at all: to a temp file of this process's own,
 * then renamed over. A write that would give the file the text it already
 * has (an update that changed nothing: a lease that names the content
 * already, an image record pulled again) is skipped, so the file, its
 * version and the flash it sits on are left alone, and the other processes
 * have nothing to read again.
 */
class JsonFile implements Adapter<DbData> {
  /** The file's text as this process last read or wrote it (updates re-read a file another process wrote). */
  private text: string | undefined;

  constructor(readonly file: string) {}

  async read(): Promise<DbData | null> {
    try {
      const text = await readText(this.file, "utf8");
      this.text = text;
      return JSON.parse(text) as DbData;
    } catch (err) {
      this.text = undefined;
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
  }

  async write(data: DbData): Promise<void> {
    const text = JSON.stringify(data, null, 1);
    if (text === this.text) return;
    const tmp = join(
      dirname(this.file),
      `.${basename(this.file)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`,
    );
    const fd = await openFd(tmp, "w", 0o600);
    try {
      // No fsync per write: ext4 (auto_da_alloc) flushes a file replaced by
      // rename before the rename, and the agent writes often.
      await writeFd(fd, text);
    } finally {
      await closeFd(fd);
    }
    try {
      await renamePath(tmp, this.file);
    } catch (err) {
      await unlinkPath(tmp).catch(() => undefined); // the rename's error is the one that matters
      throw err;
    }
    this.text = text;
  }

  async version(): Promise<FileVersion> {
    try {
      const st = await statBig(this.file, { bigint: true });
      return `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
  }
}

/** One caller's change, waiting for the write that carries it. */
interface Queued {
  change: (data: DbData) => unknown;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

export class StateDb {
  private readonly low: Low<DbData>;
  private seen: FileVersion | undefined;
  /** Changes called for while a write is under way: the next write carries them all. */
  private waiting: Queued[] = [];
  private draining = false;
  private writes = 0;

  private constructor(
    private readonly adapter: Adapter<DbData> & { version?(): Promise<FileVersion> },
    private readonly lock: WriterLock | undefined,
  ) {
    this.low = new Low<DbData>(adapter, emptyDbData());
  }

  /**
   * db.json under `root`, shared with other processes through `db.json.lock`.
   * Opening makes the root private first (0700; see system/state-root.ts),
   * repairing one left open and saying so through `warn`.
   */
  static async open(root: string, native: Pick<NativeCore, "tryLock">, warn?: Warn): Promise<StateDb> {
    secureStateRoot(root, warn);
    const db = new StateDb(new JsonFile(join(root, "db.json")), new FlockLock(join(root, "db.json.lock"), native));
    await db.refresh();
    return db;
  }

  /** A db that lives in memory only, for one process (the fleet simulation, unit tests). */
  static memory(): StateDb {
    return new StateDb(new Memory<DbData>(), undefined);
  }

  /** The state as this process last read or wrote it. Change it only through `update()`. */
  get data(): DbData {
    return this.low.data;
  }

  /**
   * How many writes this process has made: one per turn under the lock that kept a change, however
   * many changes it carried (one that leaves the text as it was counts, though the file is left alone).
   */
  get writeCount(): number {
    return this.writes;
  }

  /** Reads the file again if another process has written it since. */
  async refresh(): Promise<void> {
    const version = await this.adapter.version?.();
    if (version !== undefined && version === this.seen) return;
    await this.low.read();
    const parsed = dbData.safeParse(complete(this.low.data));
    if (!parsed.success) {
      throw new FleetError("E_CORRUPT_STATE", `db.json: ${formatIssues(parsed.error)}; move it aside to start afresh`);
    }
    this.low.data = parsed.data;
    this.seen = version;
  }

  /**
   * Applies `change` to the latest state and writes it, under the lock: no
   * other process's change is lost, and none lands half-way through this one.
   * Resolves with what `change` returns, once it is written; a throwing change
   * writes nothing. This process's changes run one at a time, in call order;
   * those called for while a write is under way share the next write, so a
   * burst of them (twenty services started side by side) costs a few
   * writes, not twenty.
   */
  update<R>(change: (data: DbData) => R | Promise<R>): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.waiting.push({ change, resolve: resolve as (value: unknown) => void, reject });
      if (!this.draining) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.waiting.length > 0) await this.commit(this.waiting.splice(0));
    } finally {
      this.draining = false;
    }
  }

  /** One turn under the lock for `group`: each change in order, then one write for those that held. */
  private async commit(group: Queued[]): Promise<void> {
    let release: (() => Promise<void>) | undefined;
    try {
      release = await this.lock?.acquire();
      await this.refresh();
      const held: { queued: Queued; result: unknown }[] = [];
      for (const queued of group) {
        // What a change that throws half-way goes back to: the file while nothing is held, else a copy.
        const before = held.length > 0 ? structuredClone(this.low.data) : undefined;
        try {
          held.push({ queued, result: await queued.change(this.low.data) });
        } catch (err) {
          if (before) this.low.data = before;
          else await this.reread();
          queued.reject(err);
        }
      }
      await this.write(held);
    } catch (err) {
      this.seen = undefined; // the state may be half-changed in memory: read the file afresh next time
      for (const queued of group) queued.reject(err); // one already settled keeps its outcome
    } finally {
      await release?.();
    }
  }

  private async reread(): Promise<void> {
    this.seen = undefined;
    await this.refresh();
  }

  private async write(held: { queued: Queued; result: unknown }[]): Promise<void> {
    if (held.length === 0) return;
    await this.low.write();
    this.writes++;
    this.seen = await this.adapter.version?.();
    for (const { queued, result } of held) queued.resolve(result);
  }
}
