/**
 * Release bundles for the tests, built by `npm run dist` (scripts/dist.sh),
 * once per test run and architecture: the first test file that asks builds
 * it, under a lock, into the run's release directory (the global setup names
 * it); the others wait for it and reuse it. Each test unpacks its own copy.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

export type Arch = "x64" | "arm64";

export const REPO = fileURLToPath(new URL("../..", import.meta.url));
export const VERSION = (JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string }).version;
/** How long a build may take on a loaded 2-core machine: a cross build, a Node download the first time, gzip. */
export const BUILD_TIMEOUT_MS = 600_000;

export const bundleName = (arch: Arch, version = VERSION) => `fleetlet-${version}-linux-${arch}`;

function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs: number }): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      out += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(" ")} exited ${code ?? signal}:\n${out}`));
    });
  });
}

/** The path of ARCH's tarball in `releaseDir`, built with `npm run dist -- --arch ARCH` unless already there. */
export async function releaseBundle(releaseDir: string, arch: Arch): Promise<string> {
  mkdirSync(releaseDir, { recursive: true });
  const tarball = join(releaseDir, `${bundleName(arch)}.tar.gz`);
  // flock(1) serialises the test files that want the same bundle; the one that gets the lock second finds it built.
  const build = 'test -f "$1" || exec npm run --silent dist -- --arch "$2" --out "$3"';
  await run("flock", [join(releaseDir, `.lock-${arch}`), "sh", "-c", build, "sh", tarball, arch, releaseDir], {
    cwd: REPO,
    timeoutMs: BUILD_TIMEOUT_MS,
  });
  return tarball;
}

/**
 * A release's version directory `home` as far as its launcher needs: bin/fleetlet (deploy/launcher.sh) and a
 * node/bin/node that is the shell script `nodeScript`. Returns bin/fleetlet's path.
 */
export function fakeReleaseHome(home: string, nodeScript: string): string {
  mkdirSync(join(home, "bin"), { recursive: true });
  mkdirSync(join(home, "node/bin"), { recursive: true });
  copyFileSync(join(REPO, "deploy/launcher.sh"), join(home, "bin/fleetlet"));
  chmodSync(join(home, "bin/fleetlet"), 0o755);
  writeFileSync(join(home, "node/bin/node"), `#!/bin/sh\n${nodeScript}\n`, { mode: 0o755 });
  return join(home, "bin/fleetlet");
}

/** Unpacks a tarball into `dir` (which must exist) and returns the bundle's directory. */
export async function unpackBundle(tarball: string, dir: string): Promise<string> {
  await run("tar", ["-xzf", tarball, "-C", dir], { timeoutMs: 120_000 });
  const [top, ...more] = readdirSync(dir);
  if (!top || more.length)
    throw new Error(`${tarball} should hold one directory, not ${JSON.stringify([top, ...more])}`);
  return join(dir, top);
}

/** Every regular file under `dir`, as paths relative to it, sorted. */
export function filesUnder(dir: string): string[] {
  const walk = (d: string): string[] =>
    readdirSync(d).flatMap((name) => {
      const p = join(d, name);
      return statSync(p).isDirectory() ? walk(p) : [relative(dir, p)];
    });
  return walk(dir).sort();
}

export const sha256File = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

/** MANIFEST.sha256 as `sha256sum` writes it, for every file under `dir` but itself. */
export function manifestOf(dir: string): string {
  return filesUnder(dir)
    .filter((f) => f !== "MANIFEST.sha256")
    .map((f) => `${sha256File(join(dir, f))}  ${f}\n`)
    .join("");
}

/**
 * A copy of the unpacked bundle `dir` as another version (its RELEASE and
 * package.json say so, its MANIFEST.sha256 is made again), packed as
 * `out/fleetlet-<version>-linux-<arch>.tar.gz`; `broken` makes its agent
 * exit with status 3 as soon as it starts. Returns the tarball's path.
 */
export async function rebrandBundle(
  dir: string,
  out: string,
  version: string,
  opts: { arch?: Arch; broken?: boolean } = {},
): Promise<string> {
  const name = bundleName(opts.arch ?? "x64", version);
  const copy = join(out, name);
  await run("cp", ["-a", dir, copy], { timeoutMs: 120_000 });
  const rewrite = (file: string, from: RegExp, to: string) =>
    writeFileSync(join(copy, file), readFileSync(join(copy, file), "utf8").replace(from, to));
  rewrite("RELEASE", /^version=.*$/m, `version=${version}`);
  rewrite("package.json", /"version": "[^"]*"/, `"version": "${version}"`);
  if (opts.broken) writeFileSync(join(copy, "lib/fleetlet.js"), "process.exit(3);\n");
  writeFileSync(join(copy, "MANIFEST.sha256"), manifestOf(copy));
  const tarball = join(out, `${name}.tar.gz`);
  await run("tar", ["-C", out, "-czf", tarball, name], { timeoutMs: 300_000 });
  return tarball;
}

/** What install.sh and the launchers run, and nothing else: no node, npm or compiler. */
const DEVICE_TOOLS = [
  "sh",
  "readlink",
  "dirname",
  "sed",
  "awk",
  "grep",
  "find",
  "sha256sum",
  "cmp",
  "cp",
  "mv",
  "rm",
  "rmdir",
  "mkdir",
  "ln",
  "chmod",
  "uname",
  "id",
  "head",
  "base64",
  "tr",
  "cut",
  "cat",
  "sort",
  // The launcher's agent self-update: its start deadline and its watchdog.
  "date",
  "sleep",
];

/** A directory of links to DEVICE_TOOLS, to be a whole PATH: a device with no toolchain. */
export function deviceToolsDir(dir: string): string {
  mkdirSync(dir, { recursive: true });
  for (const tool of DEVICE_TOOLS) {
    const path = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map((d) => join(d, tool)).find((p) => existsSync(p));
    if (!path) throw new Error(`${tool} is not on this machine`);
    symlinkSync(path, join(dir, tool));
  }
  return dir;
}
