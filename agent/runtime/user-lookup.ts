/**
 * Resolves "user[:group]" (names or numbers) against the image's own
 * /etc/passwd and /etc/group, read from the topmost layer that has them.
 * The files are opened only if they resolve inside their layer, so an image
 * cannot make the host read its own /etc/shadow through a symlink.
 */
import { readFileSync, realpathSync } from "node:fs";
import { join, sep } from "node:path";
import { FleetError, isErrno } from "../errors.js";

export interface ResolvedUser {
  uid: number;
  gid: number;
  groups: number[];
}

function readInLayers(layers: string[], rel: string): string | undefined {
  for (const layer of layers) {
    let real: string;
    try {
      real = realpathSync(join(layer, rel));
    } catch (err) {
      if (isErrno(err, "ENOENT") || isErrno(err, "ENOTDIR")) continue; // not in this layer
      throw err;
    }
    const root = realpathSync(layer);
    if (!real.startsWith(root + sep)) continue;
    return readFileSync(real, "utf8");
  }
  return undefined;
}

function table(text: string | undefined): string[][] {
  return (text ?? "")
    .split("\n")
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => l.split(":"));
}

export function resolveUser(spec: string, layers: string[], field = "user"): ResolvedUser {
  const [user = "", group] = spec.split(":");
  const fail = (what: string) => new FleetError("E_INVALID_ARGUMENT", `${field}: ${what}`, { exitCode: 125 });
  if (!user) throw fail(`expected user[:group], got "${spec}"`);
  const passwd =
    /^\d+$/.test(user) && (group === undefined || /^\d+$/.test(group)) ? [] : table(readInLayers(layers, "etc/passwd"));
  let uid: number;
  let gid: number | undefined;
  if (/^\d+$/.test(user)) {
    uid = Number(user);
    const entry = passwd.find((e) => e[2] === user);
    gid = entry ? Number(entry[3]) : undefined;
  } else {
    const entry = passwd.find((e) => e[0] === user);
    if (!entry) throw fail(`no user "${user}" in the image's /etc/passwd`);
    uid = Number(entry[2]);
    gid = Number(entry[3]);
  }
  if (group !== undefined) {
    if (/^\d+$/.test(group)) gid = Number(group);
    else {
      const entry = table(readInLayers(layers, "etc/group")).find((e) => e[0] === group);
      if (!entry) throw fail(`no group "${group}" in the image's /etc/group`);
      gid = Number(entry[2]);
    }
  }
  return { uid, gid: gid ?? 0, groups: [] };
}
