/**
 * Tells its subscribers when a host device may have come or gone: inotify
 * (Node's fs.watch) on the device root and on every directory along the
 * requested paths that exists (`serial/`, `serial/by-id/`, and the
 * directories their symlinks lead to). Directories that appear later are
 * watched as soon as their parent reports them; one that goes is dropped
 * and watched again if it comes back. Events are debounced: udev makes a
 * node and then its links within milliseconds, and each subscriber
 * re-resolves its paths once for the lot.
 */
import { type FSWatcher, lstatSync, watch } from "node:fs";
import { dirname, join, relative } from "node:path";
import { isErrno } from "../errors.js";
import { hostDevicePath } from "./device-nodes.js";

/** Long enough for udev to make a node and its links, short beside a person plugging a cable. */
export const DEVICE_DEBOUNCE_MS = 50;

interface Subscription {
  paths: readonly string[];
  onChange: () => void;
}

export class DeviceWatch {
  private readonly watchers = new Map<string, FSWatcher>();
  private readonly subscriptions = new Set<Subscription>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    readonly devRoot: string,
    private readonly debounceMs = DEVICE_DEBOUNCE_MS,
  ) {}

  /** Calls `onChange` (debounced) whenever something under the directories of `paths` changes; returns the unsubscribe. */
  subscribe(paths: readonly string[], onChange: () => void): () => void {
    const sub = { paths, onChange };
    this.subscriptions.add(sub);
    this.sync();
    return () => {
      this.subscriptions.delete(sub);
      this.sync();
    };
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    this.subscriptions.clear();
  }

  /** The directories to watch now: the root, and each existing directory on the way to each path and its resolution. */
  private wanted(): Set<string> {
    const dirs = new Set<string>();
    if (this.subscriptions.size > 0) addIfDir(dirs, this.devRoot);
    for (const { paths } of this.subscriptions) {
      for (const path of paths) {
        const host = [join(this.devRoot, path.slice("/dev/".length))];
        try {
          const real = hostDevicePath(this.devRoot, path);
          if (real) host.push(real);
        } catch (err) {
          if ((err as { code?: string }).code !== "E_DEVICE") throw err;
          // a link leading outside: its start says so; the directories on its way are watched all the same
        }
        for (const h of host) for (let d = dirname(h); isUnder(this.devRoot, d); d = dirname(d)) addIfDir(dirs, d);
      }
    }
    return dirs;
  }

  /**
   * Watches what is wanted now; `renew` watches every directory afresh. A
   * directory removed and made again is another directory, which its old
   * watch never sees (and the file system may give it the same inode
   * number, so it cannot be told apart): after each burst of changes every
   * watch is renewed, which costs a few inotify_add_watch calls.
   */
  private sync(renew = false): void {
    if (this.closed) return;
    const wanted = this.wanted();
    for (const [dir, w] of this.watchers) {
      if (wanted.has(dir) && !renew) continue;
      w.close();
      this.watchers.delete(dir);
    }
    for (const dir of wanted) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, () => this.changed());
        w.on("error", () => this.dropped(dir, w)); // the directory went: watched again if it comes back
        this.watchers.set(dir, w);
      } catch (err) {
        if (!isErrno(err, "ENOENT") && !isErrno(err, "ENOTDIR")) throw err;
        // gone between the look and the watch: its parent's event brings it back
      }
    }
  }

  private dropped(dir: string, w: FSWatcher): void {
    w.close();
    if (this.watchers.get(dir) === w) this.watchers.delete(dir); // not a newer watch of the same path
    this.changed();
  }

  private changed(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // Directories are watched (afresh) before anyone looks, so nothing made meanwhile is missed.
      this.sync(true);
      for (const sub of [...this.subscriptions]) sub.onChange();
    }, this.debounceMs);
  }
}

function isUnder(root: string, dir: string): boolean {
  const rel = relative(root, dir);
  return rel === "" || (!rel.startsWith("..") && !rel.startsWith("/"));
}

function addIfDir(dirs: Set<string>, dir: string): void {
  try {
    if (lstatSync(dir).isDirectory()) dirs.add(dir);
  } catch (err) {
    if (!isErrno(err, "ENOENT") && !isErrno(err, "ENOTDIR")) throw err;
    // not there yet: its parent is watched
  }
}
