/**
 * Unpacks an agent release bundle (a verified blob, the .tar.gz `npm run
 * dist` writes) into PREFIX/versions/<version>/, beside the running version.
 * The bundle is untrusted until its MANIFEST.sha256 checks out, so only what
 * a bundle holds is taken: directories and regular files under its one
 * top-level directory, no links or devices, no `..`, nothing over a size cap.
 * Files are hashed as they are written; the version goes into place (a
 * rename) only when every file matches MANIFEST.sha256, none is missing or
 * extra, and RELEASE names the version and architecture expected.
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  constants,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { FleetError } from "../errors.js";
import { readTar, type TarHeader } from "./tar-reader.js";

/** A bundle is some 40 MiB unpacked: far more than that is not one. */
const MAX_BUNDLE_BYTES = 512 * 1024 * 1024;
const MAX_SMALL_FILE = 64 * 1024;

export interface BundleExpectation {
  version: string;
  /** As RELEASE names it: x64 or arm64. */
  arch: string;
}

interface Unpacked {
  digests: Map<string, string>;
  small: Map<string, string>;
}

/** The path inside the bundle, or a refusal naming the entry. */
function innerPath(h: TarHeader, where: string): string | undefined {
  const parts = h.name.replace(/\/+$/, "").split("/");
  if (h.name.startsWith("/") || parts.some((p) => p === ".." || p === "." || p === ""))
    throw new FleetError("E_UNSAFE_LAYER", `${where}: entry "${h.name}" is not a plain relative path`);
  if (h.type !== "file" && h.type !== "dir")
    throw new FleetError(
      "E_UNSAFE_LAYER",
      `${where}: entry "${h.name}" is a ${h.type}; a bundle holds files and directories only`,
    );
  return parts.length === 1 ? undefined : parts.slice(1).join("/");
}

/** @long one pass over the tar: each entry is checked, written and hashed in turn */
async function extract(source: Readable, dir: string, where: string): Promise<Unpacked> {
  const digests = new Map<string, string>();
  const small = new Map<string, string>();
  let top: string | undefined;
  let total = 0;
  let fd: number | undefined;
  let current: { path: string; hash: ReturnType<typeof createHash>; text: string } | undefined;
  const finish = () => {
    if (fd === undefined || !current) return;
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    digests.set(current.path, current.hash.digest("hex"));
    if (current.text.length <= MAX_SMALL_FILE) small.set(current.path, current.text);
    current = undefined;
  };
  try {
    await pipeline(source, createGunzip(), async (tar: AsyncIterable<Buffer>) => {
      for await (const e of readTar(tar)) {
        if (e.kind === "data") {
          total += e.chunk.length;
          if (total > MAX_BUNDLE_BYTES)
            throw new FleetError("E_UNSAFE_LAYER", `${where}: more than ${MAX_BUNDLE_BYTES} bytes unpacked`);
          if (fd === undefined || !current) continue;
          writeSync(fd, e.chunk);
          current.hash.update(e.chunk);
          if (current.text.length <= MAX_SMALL_FILE) current.text += e.chunk.toString("utf8");
          continue;
        }
        finish(); // an entry's end, or the next header
        if (e.kind === "end") continue;
        const h = e.header;
        const first = h.name.split("/")[0]!;
        top ??= first;
        if (top !== first)
          throw new FleetError("E_UNSAFE_LAYER", `${where}: entry "${h.name}" is outside its top directory ${top}/`);
        const path = innerPath(h, where);
        if (path === undefined) continue;
        if (h.type === "dir") {
          mkdirSync(join(dir, path), { recursive: true, mode: 0o755 });
          continue;
        }
        mkdirSync(dirname(join(dir, path)), { recursive: true, mode: 0o755 });
        const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
        fd = openSync(join(dir, path), flags, h.mode & 0o111 ? 0o755 : 0o644);
        current = { path, hash: createHash("sha256"), text: "" };
      }
      finish();
    });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return { digests, small };
}

/** Every file MANIFEST.sha256 lists matches it, and it lists every file. */
function checkManifest(u: Unpacked, where: string): void {
  const manifest = u.small.get("MANIFEST.sha256");
  if (manifest === undefined) throw new FleetError("E_DIGEST_MISMATCH", `${where}: the bundle has no MANIFEST.sha256`);
  const listed = new Map<string, string>();
  for (const line of manifest.split("\n").filter(Boolean)) {
    const m = /^([a-f0-9]{64}) [ *](.+)$/.exec(line);
    if (!m)
      throw new FleetError(
        "E_DIGEST_MISMATCH",
        `${where}: MANIFEST.sha256: "${line.slice(0, 100)}" is not a sha256sum line`,
      );
    listed.set(m[2]!, m[1]!);
  }
  for (const [path, digest] of u.digests) {
    if (path === "MANIFEST.sha256") continue;
    const want = listed.get(path);
    if (want === undefined) throw new FleetError("E_DIGEST_MISMATCH", `${where}: ${path} is not in MANIFEST.sha256`);
    if (want !== digest)
      throw new FleetError("E_DIGEST_MISMATCH", `${where}: ${path} hashes to ${digest}, MANIFEST.sha256 says ${want}`);
  }
  const missing = [...listed.keys()].filter((p) => !u.digests.has(p));
  if (missing.length) throw new FleetError("E_DIGEST_MISMATCH", `${where}: missing ${missing.slice(0, 5).join(", ")}`);
}

function checkRelease(u: Unpacked, want: BundleExpectation, where: string): void {
  const release = u.small.get("RELEASE") ?? "";
  const field = (k: string) => new RegExp(`^${k}=(.*)$`, "m").exec(release)?.[1];
  if (field("version") !== want.version || field("arch") !== want.arch)
    throw new FleetError(
      "E_AGENT_UPDATE_FAILED",
      `${where}: RELEASE names version ${field("version") ?? "none"} for ${field("arch") ?? "no arch"}, not ${want.version} for ${want.arch}`,
    );
}

/**
 * Unpacks the bundle into `versionsDir/<version>` (through `<version>.new`),
 * unless that version is there already. Returns the version's directory.
 */
export async function unpackBundle(
  open: () => Readable,
  versionsDir: string,
  want: BundleExpectation,
  where: string,
): Promise<string> {
  const dest = join(versionsDir, want.version);
  if (existsSync(join(dest, "MANIFEST.sha256"))) return dest;
  const tmp = `${dest}.new`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true, mode: 0o755 });
  try {
    const unpacked = await extract(open(), tmp, where);
    checkManifest(unpacked, where);
    checkRelease(unpacked, want, where);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  rmSync(dest, { recursive: true, force: true });
  renameSync(tmp, dest);
  return dest;
}
