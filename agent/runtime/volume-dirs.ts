/**
 * Named volumes: `<root>/volumes/<name>/` is root's alone (0700) and holds
 * the volume's content in `data/`, which is what containers mount. The
 * split keeps both promises: no local user can reach what a container
 * wrote (a setuid program, say) through the host, and inside the container
 * the volume's root keeps the 0755 it always had, so a service running as
 * another user can still use what is below it.
 *
 * Volumes made before this layout held their content directly in
 * `volumes/<name>/`. The first container start after the upgrade moves
 * them: `volumes/` is renamed to `volumes.migrating/` in one step, then
 * each volume is renamed into `volumes/<name>/data`, and `volumes/.layout`
 * marks the new layout. A crash in between leaves `volumes.migrating/`,
 * which the next start finishes. It runs under a lock (`volumes.lock`), so
 * two processes never move the same volume twice. A running container's
 * mount follows its volume through the renames.
 */
import { chmodSync, existsSync, mkdirSync, readdirSync, renameSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NAME_PATTERN } from "../../schemas/container.js";
import { FleetError, isErrno } from "../errors.js";
import { FlockLock } from "../system/flock-lock.js";
import type { NativeCore } from "../system/native.js";
import { privateDir } from "../system/state-root.js";

const LAYOUT = ".layout";
/** The mode of a new volume's content dir: the root of the volume as the container sees it. */
const DATA_MODE = 0o755;

export class VolumeDirs {
  private readonly dir: string;
  private readonly migrating: string;
  private readonly lock: FlockLock;

  constructor(root: string, native: Pick<NativeCore, "tryLock">) {
    this.dir = join(root, "volumes");
    this.migrating = join(root, "volumes.migrating");
    this.lock = new FlockLock(join(root, "volumes.lock"), native);
  }

  /** The directory a container mounts for volume `name`. */
  source(name: string): string {
    return join(this.dir, name, "data");
  }

  private current(): boolean {
    return existsSync(join(this.dir, LAYOUT)) && !existsSync(this.migrating);
  }

  /** Makes the volumes `names` (and moves volumes of the old layout first). */
  async prepare(names: string[]): Promise<void> {
    if (!this.current()) {
      const release = await this.lock.acquire();
      try {
        if (!this.current()) this.migrate();
      } finally {
        await release();
      }
    }
    for (const name of names) {
      privateDir(join(this.dir, name));
      try {
        mkdirSync(this.source(name), DATA_MODE);
        chmodSync(this.source(name), DATA_MODE); // whatever the umask
      } catch (err) {
        if (!isErrno(err, "EEXIST")) throw err;
      }
    }
  }

  /** Under the lock: the old layout (or a move a crash interrupted) into the new one. */
  private migrate(): void {
    if (existsSync(this.dir) && !existsSync(join(this.dir, LAYOUT))) {
      if (!existsSync(this.migrating)) renameSync(this.dir, this.migrating);
      else if (readdirSync(this.dir).length > 0)
        throw new FleetError(
          "E_RUNTIME",
          `volumes: both ${this.dir} (without ${LAYOUT}) and ${this.migrating} hold volumes; move them by hand`,
        );
    }
    privateDir(this.dir);
    writeFileSync(join(this.dir, LAYOUT), "2\n", { mode: 0o600 });
    if (!existsSync(this.migrating)) return;
    for (const name of readdirSync(this.migrating)) {
      const from = join(this.migrating, name);
      // Anything that is not a volume (no volume name starts with '.') is carried over as it is.
      const to = NAME_PATTERN.test(name) ? this.source(name) : join(this.dir, name);
      if (to !== join(this.dir, name)) privateDir(join(this.dir, name));
      if (existsSync(to)) throw new FleetError("E_RUNTIME", `volumes: both ${to} and ${from} exist; move one by hand`);
      renameSync(from, to);
    }
    rmdirSync(this.migrating);
  }
}
