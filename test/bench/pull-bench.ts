/**
 * `npm run bench -- pull [--mib 200] [--runs 3]`: pulls of an image of
 * incompressible data in four layers from a local TLS registry (Debian's
 * docker-registry), against the tools a user would pick instead, in the
 * same run:
 *   download and verify  fleetlet pull --download-only  vs  skopeo copy docker://… oci:DIR
 *                        and beside them the floor, plain Node fetching and hashing the same
 *                        blobs under fleetlet's Node flags (download-floor.ts)
 *   pull and unpack      fleetlet pull                   vs  skopeo copy, then umoci unpack
 *   unpack alone         fleetlet's layer unpack         vs  tar -xzf of the same layer
 * Each side runs as a child process under /usr/bin/time, which reports its
 * wall time and the CPU time (user + sys) of its whole process tree.
 *   resume               bytes on the wire after kill -9 at ~50% and a second pull, vs the image size
 * and, for the first two, the same pulls in a warm process as the agent makes them (warm-pull.ts).
 * `--bundle` runs the release bundle's lib/fleetlet.js, as a device does, instead of
 * dist/'s modules; `--agent-flags` and `--agent-env` give fleetlet's processes Node
 * flags or environment (agent-launch.ts). The warm rows use dist/'s modules either way.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { pushImage } from "../../agent/registry/push.js";
import { startCountingProxy } from "../support/counting-proxy.js";
import { startRegistry } from "../support/registry.js";
import { agentLaunch, cpuMs } from "./agent-launch.js";
import { type Cost, printCoreBound } from "./core-bound.js";
import { warmPulls } from "./warm-pull.js";

const UNPACK_ONE = new URL("./unpack-one.js", import.meta.url).pathname;
const DOWNLOAD_FLOOR = new URL("./download-floor.js", import.meta.url).pathname;

const plus = (a: Cost, b: Cost): Cost => ({ wall: a.wall + b.wall, cpu: a.cpu + b.cpu });

/** Runs cmd under /usr/bin/time: its wall time, and the user + sys time of it and every child it waited for. */
function timed(cmd: string, args: string[], timesFile: string, env?: NodeJS.ProcessEnv): Cost {
  const t0 = performance.now();
  const r = spawnSync("/usr/bin/time", ["-f", "%U %S", "-o", timesFile, cmd, ...args], {
    encoding: "utf8",
    ...(env ? { env } : {}),
  });
  const wall = performance.now() - t0;
  if (r.status !== 0)
    throw new Error(
      `${cmd} ${args.slice(0, 3).join(" ")} failed: ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`,
    );
  const [user, sys] = readFileSync(timesFile, "utf8").trim().split("\n").at(-1)!.split(" ").map(Number);
  return { wall, cpu: ((user ?? Number.NaN) + (sys ?? Number.NaN)) * 1000 };
}

/** The bytes of the files in dir now; a file (a lock, a finished ingest) gone between the listing and its stat counts 0. */
function bytesIn(dir: string): number {
  if (!existsSync(dir)) return 0;
  return readdirSync(dir).reduce((n, f) => n + (statSync(join(dir, f), { throwIfNoEntry: false })?.size ?? 0), 0);
}

/** A state root as a device's is after `rmi` and `prune`: all gone but the compile cache. */
function emptyRoot(root: string): void {
  for (const name of readdirSync(root))
    if (name !== "compile-cache") rmSync(join(root, name), { recursive: true, force: true });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function row(name: string, ours: Cost[], theirs: Cost[], anchor: string, goal: { wall: string; cpu: string }): void {
  const s = (ms: number) => (ms / 1000).toFixed(2).padStart(6);
  for (const k of ["wall", "cpu"] as const) {
    const a = median(ours.map((c) => c[k]));
    const b = median(theirs.map((c) => c[k]));
    console.log(
      `${(k === "wall" ? name : "").padEnd(22)} ${k.padEnd(4)} fleetlet ${s(a)} s   ${anchor.padEnd(26)} ${s(b)} s   ratio ${(a / b).toFixed(2)} (goal ${goal[k]})`,
    );
  }
}

export async function pullBench(args: string[]): Promise<void> {
  const arg = (name: string, dflt: number) => Number(args[args.indexOf(`--${name}`) + 1] ?? dflt) || dflt;
  const totalMiB = args.includes("--mib") ? arg("mib", 200) : 200;
  const runs = args.includes("--runs") ? arg("runs", 3) : 3;
  const layers = 4;
  const work = mkdtempSync(join(tmpdir(), "fleetlet-pull-bench-"));
  const reg = await startRegistry({ auth: "htpasswd" });
  const proxy = await startCountingProxy({ host: "127.0.0.1", port: reg.port });
  try {
    const registries = {
      [reg.host]: { username: reg.username, password: reg.password, ca: reg.caFile },
      [proxy.host]: { username: reg.username, password: reg.password, ca: reg.caFile },
    };
    const config = join(work, "config.json");
    writeFileSync(config, JSON.stringify({ registries }));
    const launch = agentLaunch(args, work);
    console.log(
      `pull: ${totalMiB} MiB of incompressible data in ${layers} layers, local TLS registry ${reg.host}, ${runs} runs each, medians; fleetlet from ${launch.describe}`,
    );
    let base: string | undefined;
    for (let i = 0; i < layers; i++) {
      const dir = join(work, `layer${i}`);
      mkdirSync(dir);
      writeFileSync(join(dir, `data${i}.bin`), randomBytes(Math.round((totalMiB / layers) * 1024 * 1024)));
      const ref = `${reg.host}/bench/big:${i}`;
      await pushImage(dir, ref, { registries, base, cmd: ["/bin/true"] });
      base = ref;
      rmSync(dir, { recursive: true });
    }
    const image = `${reg.host}/bench/big:${layers - 1}`;
    const creds = `${reg.username}:${reg.password}`;
    const skopeo = (dest: string) => [
      "copy",
      "--quiet",
      "--src-creds",
      creds,
      "--src-cert-dir",
      reg.certDir,
      `docker://${image}`,
      `oci:${dest}:img`,
    ];

    const times = join(work, "times");
    const dl: Cost[] = [];
    const dlSkopeo: Cost[] = [];
    const dlFloor: Cost[] = [];
    const [repo, tag] = image.slice(reg.host.length + 1).split(":") as [string, string];
    const floorArgs = (dest: string) => [
      ...launch.argv.slice(0, -1), // fleetlet's Node flags, not its script
      DOWNLOAD_FLOOR,
      ...[reg.host, repo, tag, reg.username, reg.password, reg.caFile, dest],
    ];
    const full: Cost[] = [];
    const fullSkopeo: Cost[] = [];
    /** A run's cost with the registry's CPU over it: the download rows' bound (core-bound.ts). */
    const served = (run: () => Cost): Cost => {
      const before = cpuMs(reg.pid);
      const cost = run();
      return { ...cost, server: cpuMs(reg.pid) - before };
    };
    const fleetlet = (root: string, ...rest: string[]) =>
      timed(
        process.execPath,
        [...launch.argv, "--root", root, "--config", config, "pull", "--quiet", ...rest, image],
        times,
        launch.env,
      );
    // fleetlet's state roots outlive the runs, as a device's does: each run starts with the image gone
    // but the compile cache kept (agent/system/compile-cache.ts). A command keeps one only in a root
    // that already holds state, so the first pull makes the state and the second the cache.
    const ourRoots = [join(work, "fleetlet-dl"), join(work, "fleetlet-full")];
    for (const [i, root] of ourRoots.entries()) {
      for (let warm = 0; warm < 2; warm++) fleetlet(root, ...(i === 0 ? ["--download-only"] : []));
      if (!existsSync(join(root, "compile-cache"))) throw new Error(`${root}: no compile cache after two pulls`);
    }
    for (let r = 0; r < runs; r++) {
      for (const root of ourRoots) emptyRoot(root);
      const roots = [join(work, `o${r}a`), join(work, `o${r}b`), join(work, `o${r}c`)];
      dl.push(served(() => fleetlet(ourRoots[0]!, "--download-only")));
      dlSkopeo.push(served(() => timed("skopeo", skopeo(roots[0]!), times)));
      mkdirSync(roots[2]!);
      dlFloor.push(served(() => timed(process.execPath, floorArgs(roots[2]!), times)));
      full.push(fleetlet(ourRoots[1]!));
      fullSkopeo.push(
        plus(
          timed("skopeo", skopeo(roots[1]!), times),
          timed("umoci", ["unpack", "--image", `${roots[1]}:img`, join(roots[1]!, "bundle")], times),
        ),
      );
      for (const d of roots) rmSync(d, { recursive: true, force: true });
    }
    for (const root of ourRoots) rmSync(root, { recursive: true, force: true });
    console.log("");
    row("download and verify", dl, dlSkopeo, "skopeo copy", { wall: "<= 0.8", cpu: "<= 1.0" });
    row("  floor: plain Node", dlFloor, dlSkopeo, "skopeo copy", { wall: "-", cpu: "-" });
    row("pull and unpack", full, fullSkopeo, "skopeo copy + umoci unpack", { wall: "<= 0.6", cpu: "-" });
    // The same pulls in a warm process (the agent's case): no Node start, no module loads, kept connections.
    const warmDl = await warmPulls(image, registries, work, { runs, unpack: false });
    row("  warm, as the agent", warmDl, dlSkopeo, "skopeo copy", { wall: "-", cpu: "-" });
    const warmFull = await warmPulls(image, registries, work, { runs, unpack: true });
    row("  warm, as the agent", warmFull, fullSkopeo, "skopeo copy + umoci unpack", { wall: "-", cpu: "-" });
    printCoreBound(
      [
        ["fleetlet", dl],
        ["skopeo copy", dlSkopeo],
        ["plain Node", dlFloor],
      ],
      dlSkopeo,
      0.8,
      totalMiB * 1048576,
    );

    // Unpack alone: one layer blob, from disk, into an empty directory.
    const store = join(work, "unpack-store");
    execFileSync(
      process.execPath,
      [...launch.argv, "--root", store, "--config", config, "pull", "--quiet", "--download-only", image],
      { env: launch.env },
    );
    const blobDir = join(store, "blobs", "sha256");
    const blob = readdirSync(blobDir)
      .map((n) => join(blobDir, n))
      .sort((a, b) => statSync(b).size - statSync(a).size)[0]!;
    const ours: Cost[] = [];
    const tar: Cost[] = [];
    for (let r = 0; r < runs; r++) {
      const a = join(work, `u${r}a`);
      const b = join(work, `u${r}b`);
      mkdirSync(a);
      mkdirSync(b);
      // Under fleetlet's Node flags and environment (the launcher's, with --bundle), as a command unpacks.
      const unpackArgs = [UNPACK_ONE, blob, "application/vnd.oci.image.layer.v1.tar+gzip", a];
      ours.push(timed(process.execPath, [...launch.argv.slice(0, -1), ...unpackArgs], times, launch.env));
      tar.push(timed("tar", ["-xzf", blob, "-C", b], times));
      rmSync(a, { recursive: true });
      rmSync(b, { recursive: true });
    }
    row(`unpack (${(statSync(blob).size / 1048576).toFixed(0)} MiB layer)`, ours, tar, "tar -xzf", {
      wall: "<= 1.0",
      cpu: "-",
    });

    // Resume: kill -9 at about half, pull again, count what crossed the wire.
    const resumeRoot = join(work, "resume");
    const viaProxy = `${proxy.host}/bench/big:${layers - 1}`;
    const imageBytes = totalMiB * 1024 * 1024;
    proxy.reset();
    const child = spawn(
      process.execPath,
      [...launch.argv, "--root", resumeRoot, "--config", config, "pull", "--quiet", "--max-rate", "100M", viaProxy],
      { stdio: "ignore", env: launch.env },
    );
    const ingest = join(resumeRoot, "ingest");
    for (;;) {
      await sleep(20);
      const partial = bytesIn(ingest);
      const blobs = bytesIn(join(resumeRoot, "blobs", "sha256"));
      if (partial + blobs >= imageBytes / 2 || child.exitCode !== null) break;
    }
    child.kill("SIGKILL");
    await new Promise((resolve) => child.on("exit", resolve));
    const first = proxy.bytesDown();
    const second = await new Promise<number>((resolve, reject) => {
      const again = spawn(
        process.execPath,
        [...launch.argv, "--root", resumeRoot, "--config", config, "pull", "--quiet", viaProxy],
        { stdio: "ignore", env: launch.env },
      );
      again.on("exit", (code) =>
        code === 0 ? resolve(proxy.bytesDown() - first) : reject(new Error(`resumed pull exited ${code}`)),
      );
    });
    console.log(
      `resume after kill -9   first run ${(first / 1048576).toFixed(1)} MiB, second ${(second / 1048576).toFixed(1)} MiB on the wire: ${((first + second) / imageBytes).toFixed(3)}× the image (goal <= 1.02)`,
    );
  } finally {
    await proxy.stop();
    await reg.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
