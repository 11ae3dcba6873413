/**
 * Leases, as containerd has them: while a pull, an unpack or an apply is
 * under way, the blobs and snapshots it names survive garbage collection,
 * even before any image record names them. A lease names its holder (pid and
 * start time), so one left by a process that died expires at the next
 * collection. Content is added to a lease *before* the holder checks whether
 * it is present: a collection either sees the lease, or ran entirely before
 * the check, which then finds the content gone and fetches it again.
 */
import { randomBytes } from "node:crypto";
import type { DbData, StateDb } from "../state/db.js";
import { currentHolder, type HolderCheck, holderAlive } from "./process-holder.js";

export interface LeasedContent {
  blobs?: Iterable<string>;
  snapshots?: Iterable<string>;
}

export class Lease {
  private released = false;

  constructor(
    private readonly db: StateDb,
    readonly id: string,
  ) {}

  /** Names more content as in use by this lease. */
  async add(content: LeasedContent): Promise<void> {
    const blobs = [...(content.blobs ?? [])];
    const snapshots = [...(content.snapshots ?? [])];
    const known = this.db.data.leases[this.id];
    if (known && blobs.every((b) => known.blobs.includes(b)) && snapshots.every((s) => known.snapshots.includes(s)))
      return;
    await this.db.update((d) => {
      const lease = d.leases[this.id];
      if (!lease) throw new Error(`lease ${this.id} was released or expired`);
      lease.blobs = [...new Set([...lease.blobs, ...blobs])];
      lease.snapshots = [...new Set([...lease.snapshots, ...snapshots])];
    });
  }

  /** Ends the lease: what only it named may now be collected. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.db.update((d) => {
      delete d.leases[this.id];
    });
  }
}

export class Leases {
  constructor(
    private readonly db: StateDb,
    private readonly native: HolderCheck,
  ) {}

  /** A new lease held by this process, for `purpose` ("pull registry/app:1", "apply web-3"). */
  async take(purpose: string): Promise<Lease> {
    const id = `${Date.now().toString(36)}-${randomBytes(6).toString("hex")}`;
    const holder = currentHolder(this.native);
    await this.db.update((d) => {
      d.leases[id] = { purpose, holder, createdAt: new Date().toISOString(), blobs: [], snapshots: [] };
    });
    return new Lease(this.db, id);
  }

  /** Runs `work` under a new lease, released however the work ends. */
  async with<T>(purpose: string, work: (lease: Lease) => Promise<T>): Promise<T> {
    const lease = await this.take(purpose);
    try {
      return await work(lease);
    } finally {
      await lease.release();
    }
  }

  /**
   * Within a db update: drops the leases whose holder died, and returns what
   * the live ones hold.
   */
  collectLive(d: DbData): { blobs: Set<string>; snapshots: Set<string>; expired: number } {
    const blobs = new Set<string>();
    const snapshots = new Set<string>();
    let expired = 0;
    for (const [id, lease] of Object.entries(d.leases)) {
      if (!holderAlive(this.native, lease.holder)) {
        delete d.leases[id];
        expired++;
        continue;
      }
      for (const b of lease.blobs) blobs.add(b);
      for (const s of lease.snapshots) snapshots.add(s);
    }
    return { blobs, snapshots, expired };
  }
}
