/**
 * Reads a small file out of an image (its layers, topmost first, or a
 * `--rootfs` directory), treating everything in the image as hostile:
 *
 * - the path is resolved as the container will see it: component by
 *   component through the merged layers, overlayfs whiteouts honoured, a
 *   layer's copy of a directory merged only while it is a real directory,
 *   and symlinks followed only inside the image (an absolute target starts
 *   again at the image's root, `..` stops there), so no link ever leads into
 *   the host;
 * - the file must be a regular file. Its type is checked with lstat before it
 *   is opened, so a FIFO or a device node (`/dev/zero`, a watchdog) is never
 *   opened at all, and again with fstat on the descriptor, which is opened
 *   O_NOFOLLOW|O_NONBLOCK so nothing can make the open follow a link or wait;
 * - at most `maxBytes` are read.
 *
 * A file the image does not have is `undefined`; anything else refused is
 * E_UNSAFE_IMAGE naming the file. Layers are not changed once unpacked (and
 * a `--rootfs` directory is root's own), so a check is not raced by a change.
 * Opaque directories (an xattr Node cannot read) are not honoured: a file an
 * upper layer made opaque may still be read from a lower one, which is the
 * image's own content all the same.
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readlinkSync, readSync, type Stats } from "node:fs";
import { join } from "node:path";
import { FleetError, isErrno } from "../errors.js";

/** Large enough for any real /etc/passwd or /etc/group. */
export const IMAGE_FILE_MAX_BYTES = 1 << 20;
/** As the kernel's own limit on links followed in one lookup. */
const MAX_LINKS = 40;
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

/** One level of the path resolved so far: its name and the layers whose copy of it merges into it. */
interface Dir {
  name: string;
  layers: string[];
}

interface Entry {
  path: string;
  st: Stats;
  /** Every layer (from the one found on) where this name is a real directory, while they merge. */
  dirLayers: string[];
}

/** Exit status 125, as for every refusal before a container starts. */
const unsafe = (what: string, why: string) =>
  new FleetError(
    "E_UNSAFE_IMAGE",
    `image file ${what}: ${why}; fleetlet reads it only as a regular file inside the image`,
    { exitCode: 125 },
  );

function lstatIfPresent(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (err) {
    if (isErrno(err, "ENOENT") || isErrno(err, "ENOTDIR")) return undefined; // not in this layer
    throw err;
  }
}

const isWhiteout = (st: Stats) => st.isCharacterDevice() && st.rdev === 0;

/**
 * `name` in the merged directory `at`. Every component of `at` is a real
 * directory in each of `dir.layers` (checked as it was entered), so lstat
 * here follows no link.
 */
function lookup(at: Dir[], name: string): Entry | undefined {
  const rel = [...at.map((d) => d.name), name];
  const layers = at.at(-1)!.layers;
  let found: Entry | undefined;
  for (const layer of layers) {
    const path = join(layer, ...rel);
    const st = lstatIfPresent(path);
    if (!st) continue;
    if (found) {
      // A lower copy merges into a directory found above only while it is a directory itself.
      if (!st.isDirectory()) break;
      found.dirLayers.push(layer);
      continue;
    }
    if (isWhiteout(st)) return undefined;
    found = { path, st, dirLayers: st.isDirectory() ? [layer] : [] };
    if (!st.isDirectory()) break;
  }
  return found;
}

/** The entry the container would see at `path` (symlinks followed inside the image), or undefined. */
function resolve(layers: string[], path: string): Entry | undefined {
  const at: Dir[] = [{ name: "", layers }];
  const rest = path.split("/");
  let links = 0;
  let viaLink: string | undefined;
  while (rest.length > 0) {
    const name = rest.shift()!;
    if (name === "" || name === ".") continue;
    if (name === "..") {
      if (at.length > 1) at.pop();
      continue;
    }
    const entry = lookup(at, name);
    if (!entry) {
      if (viaLink) throw unsafe(path, `it leads through the symlink ${viaLink} to a file the image does not have`);
      return undefined;
    }
    if (entry.st.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw unsafe(path, `more than ${MAX_LINKS} symlinks on the way`);
      const target = readlinkSync(entry.path);
      viaLink = `${[...at.map((d) => d.name), name].join("/")} → ${target}`;
      if (target.startsWith("/")) at.splice(1);
      rest.unshift(...target.split("/"));
      continue;
    }
    if (rest.every((r) => r === "" || r === ".")) return entry;
    if (!entry.st.isDirectory()) return undefined; // ENOTDIR: the container would not find it either
    at.push({ name, layers: entry.dirLayers });
  }
  return undefined;
}

const kind = (st: Stats) =>
  st.isFIFO()
    ? "a FIFO"
    : st.isCharacterDevice()
      ? "a character device"
      : st.isBlockDevice()
        ? "a block device"
        : st.isSocket()
          ? "a socket"
          : st.isDirectory()
            ? "a directory"
            : "not a regular file";

/** The text of `path` (absolute, as inside the container), or undefined when the image has no such file. */
export function readImageFile(layers: string[], path: string, maxBytes = IMAGE_FILE_MAX_BYTES): string | undefined {
  const entry = resolve(layers, path);
  if (!entry) return undefined;
  if (!entry.st.isFile()) throw unsafe(path, `it is ${kind(entry.st)}`);
  if (entry.st.size > maxBytes) throw unsafe(path, `it is ${entry.st.size} bytes, more than the ${maxBytes} allowed`);
  let fd: number;
  try {
    fd = openSync(entry.path, OPEN_FLAGS);
  } catch (err) {
    if (isErrno(err, "ELOOP")) throw unsafe(path, "it changed into a symlink while it was read");
    throw err;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.ino !== entry.st.ino || st.dev !== entry.st.dev)
      throw unsafe(path, "it changed while it was read");
    // One byte more than allowed tells a file that grew since the check from one that did not.
    const buf = Buffer.alloc(maxBytes + 1);
    let n = 0;
    for (;;) {
      const got = n < buf.length ? readSync(fd, buf, n, buf.length - n, n) : 0;
      if (got === 0) break;
      n += got;
    }
    if (n > maxBytes) throw unsafe(path, `it is more than the ${maxBytes} bytes allowed`);
    return buf.subarray(0, n).toString("utf8");
  } finally {
    closeSync(fd);
  }
}
