/**
 * One writer per partial download, across processes: the agent and a
 * `fleetlet pull` may want the same layer at once. The lock file
 * (`ingest/<hex>.lock`) names its holder by pid and start time, so a lock
 * left by a killed process is taken over, never waited on forever.
 */
import { randomBytes } from "node:crypto";
import { linkSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { isErrno } from "../errors.js";
import type { NativeCore } from "../system/native.js";
import { digestHex } from "./digest.js";

const LOCK_POLL_MS = 100;

export class IngestLocks {
  constructor(
    private readonly dir: string,
    private readonly native: Pick<NativeCore, "startTime">,
  ) {}

  /** Waits for the lock of `digest`'s partial; resolves with the release function. */
  async lock(digest: string, signal?: AbortSignal): Promise<() => void> {
    for (;;) {
      const release = this.tryLock(digest);
      if (release) return release;
      await sleep(LOCK_POLL_MS, undefined, signal ? { signal } : {});
    }
  }

  /** The lock of `digest`'s partial if no live process holds it, else undefined. */
  tryLock(digest: string): (() => void) | undefined {
    const path = join(this.dir, `${digestHex(digest)}.lock`);
    const me = `${process.pid} ${this.native.startTime(process.pid)}`;
    for (;;) {
      const release = this.take(path, me);
      if (release) return release;
      let holder = "";
      try {
        holder = readFileSync(path, "utf8");
      } catch (err) {
        if (isErrno(err, "ENOENT")) continue; // released meanwhile
        throw err;
      }
      const [pid, start] = holder.split(" ");
      if (pid && String(this.native.startTime(Number(pid)) ?? "") === start) return undefined;
      this.evict(path, holder);
    }
  }

  private unique(path: string): string {
    return `${path}.${process.pid}.${randomBytes(4).toString("hex")}`;
  }

  /** Written whole under a private name, then linked into place: a reader never sees a half-written lock. */
  private take(path: string, me: string): (() => void) | undefined {
    const mine = this.unique(path);
    writeFileSync(mine, me);
    try {
      linkSync(mine, path);
      return () => {
        try {
          if (readFileSync(path, "utf8") === me) unlinkSync(path);
        } catch (err) {
          if (!isErrno(err, "ENOENT")) throw err;
        }
      };
    } catch (err) {
      if (!isErrno(err, "EEXIST")) throw err;
      return undefined;
    } finally {
      unlinkSync(mine);
    }
  }

  /** Its holder is gone: move the lock aside, and keep it out only if it is still the dead one's. */
  private evict(path: string, holder: string): void {
    const aside = this.unique(path);
    try {
      renameSync(path, aside);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return;
      throw err;
    }
    if (readFileSync(aside, "utf8") !== holder) {
      // A live process took it between our read and the rename: put it back unless another lock is already there.
      try {
        linkSync(aside, path);
      } catch (err) {
        if (!isErrno(err, "EEXIST")) throw err;
      }
    }
    unlinkSync(aside);
  }
}
