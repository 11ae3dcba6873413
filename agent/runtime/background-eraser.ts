/**
 * Removed containers' files, erased in the background: a removal renames the
 * container's directory out of sight at once and the tree goes here, so a
 * delete does not wait for a large writable layer to be erased.
 */
import { FleetError } from "../errors.js";

export class BackgroundEraser {
  private readonly pending = new Set<Promise<void>>();
  private readonly errors: FleetError[] = [];

  constructor(private readonly removeTree: (dir: string) => Promise<void>) {}

  erase(dir: string): void {
    const erase: Promise<void> = this.removeTree(dir)
      .catch((err: Error) => {
        this.errors.push(
          new FleetError("E_RUNTIME", `erase removed container files ${dir}: ${err.message}`, { cause: err }),
        );
      })
      .finally(() => this.pending.delete(erase));
    this.pending.add(erase);
  }

  /** Resolves once every erase has finished; rejects with the first that failed. */
  async settled(): Promise<void> {
    while (this.pending.size > 0) await Promise.all(this.pending);
    const failed = this.errors.splice(0);
    if (failed.length > 0) throw failed[0];
  }
}
