/**
 * A requested device (`/dev/ttyUSB0`, `/dev/serial/by-id/…`) resolved to the
 * host node it names now. Paths under /dev map into the runtime's device
 * root (`devRoot`, /dev unless the config says otherwise, so tests can use a
 * directory of their own): `/dev/ttyUSB0` is `<devRoot>/ttyUSB0`. Symlinks
 * are followed one component at a time, only inside the device root: an
 * absolute target under /dev starts again at the device root, and anything
 * leading outside it (`/etc/…`, `..` above it) is refused. The result must
 * be a character or block device; its type, numbers, mode and owner are
 * what the container's node gets.
 */
import { type BigIntStats, lstatSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import type { DeviceNode, DeviceRequest } from "../../schemas/device.js";
import { FleetError, isErrno } from "../errors.js";

/** As the kernel's own limit on links followed in one lookup. */
const MAX_LINKS = 40;

const refuse = (path: string, why: string) => new FleetError("E_DEVICE", `device ${path}: ${why}`, { exitCode: 125 });

/** The host path of the node `path` names (symlinks resolved inside `devRoot`), or undefined when it is absent. */
export function hostDevicePath(devRoot: string, path: string): string | undefined {
  const rest = path.slice("/dev/".length).split("/");
  const at: string[] = [];
  let links = 0;
  while (rest.length > 0) {
    const name = rest.shift()!;
    if (name === "" || name === ".") continue;
    if (name === "..") {
      if (at.length === 0) throw refuse(path, "a symlink on the way leads above /dev");
      at.pop();
      continue;
    }
    const host = join(devRoot, ...at, name);
    let st: ReturnType<typeof lstatSync>;
    try {
      st = lstatSync(host);
    } catch (err) {
      if (isErrno(err, "ENOENT") || isErrno(err, "ENOTDIR")) return undefined; // not there (yet)
      throw err;
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw refuse(path, `more than ${MAX_LINKS} symlinks on the way`);
      let target: string;
      try {
        target = readlinkSync(host);
      } catch (err) {
        // udev removed the link (or put something else there) since the lstat: absent, or look at it again.
        if (isErrno(err, "ENOENT")) return undefined;
        if (!isErrno(err, "EINVAL")) throw err;
        rest.unshift(name);
        continue;
      }
      if (target.startsWith("/")) {
        if (target !== "/dev" && !target.startsWith("/dev/"))
          throw refuse(path, `the symlink /dev/${[...at, name].join("/")} → ${target} leads outside /dev`);
        at.length = 0;
        rest.unshift(...target.slice("/dev".length).split("/"));
      } else rest.unshift(...target.split("/"));
      continue;
    }
    at.push(name);
    if (rest.some((r) => r !== "" && r !== ".") && !st.isDirectory()) return undefined;
  }
  return join(devRoot, ...at);
}

/** Major and minor of a Linux dev_t, as glibc's major()/minor() split it. */
export function splitDev(rdev: bigint): { major: number; minor: number } {
  return {
    major: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)),
    minor: Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)),
  };
}

/** The node a request names now, or undefined when the device is absent; E_DEVICE when it is not a device. */
export function resolveDevice(devRoot: string, request: DeviceRequest): DeviceNode | undefined {
  const host = hostDevicePath(devRoot, request.path);
  if (host === undefined) return undefined;
  let st: BigIntStats;
  try {
    st = lstatSync(host, { bigint: true });
  } catch (err) {
    if (isErrno(err, "ENOENT")) return undefined; // removed since it was resolved
    throw err;
  }
  if (!st.isCharacterDevice() && !st.isBlockDevice())
    throw refuse(request.path, `${host} is not a character or block device`);
  return {
    target: request.target ?? request.path,
    type: st.isCharacterDevice() ? "c" : "b",
    ...splitDev(st.rdev),
    mode: Number(st.mode & 0o777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    permissions: request.permissions,
  };
}
