/**
 * Resolves "user[:group]" (names or numbers) against the image's own
 * /etc/passwd and /etc/group, as the container will see them through its
 * layers. They are read with readImageFile (image-file.ts): links followed
 * only inside the image, regular files only, at most 1 MiB, so an image can
 * neither make the host read its own files nor hang or exhaust the agent
 * with a FIFO or a device node in their place.
 */

import { FleetError } from "../errors.js";
import { readImageFile } from "./image-file.js";

export interface ResolvedUser {
  uid: number;
  gid: number;
  groups: number[];
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
    /^\d+$/.test(user) && (group === undefined || /^\d+$/.test(group))
      ? []
      : table(readImageFile(layers, "/etc/passwd"));
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
      const entry = table(readImageFile(layers, "/etc/group")).find((e) => e[0] === group);
      if (!entry) throw fail(`no group "${group}" in the image's /etc/group`);
      gid = Number(entry[2]);
    }
  }
  return { uid, gid: gid ?? 0, groups: [] };
}

/**
 * Supplementary groups (`groupAdd`, `--group-add`): numbers as they are,
 * names looked up in the image's /etc/group (read as above). `field` names
 * the list in a refusal, e.g. `services.web.groupAdd`.
 */
export function resolveGroups(groups: readonly (string | number)[], layers: string[], field = "groupAdd"): number[] {
  const names = groups.filter((g) => typeof g === "string" && !/^\d+$/.test(g));
  const entries = names.length ? table(readImageFile(layers, "/etc/group")) : [];
  return groups.map((g, i) => {
    if (typeof g === "number") return g;
    if (/^\d+$/.test(g)) return Number(g);
    const entry = entries.find((e) => e[0] === g);
    const gid = entry ? Number(entry[2]) : Number.NaN;
    if (!Number.isInteger(gid) || gid < 0)
      throw new FleetError("E_INVALID_ARGUMENT", `${field}[${i}]: no group "${g}" in the image's /etc/group`, {
        exitCode: 125,
      });
    return gid;
  });
}
