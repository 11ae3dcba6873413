/**
 * `npm run bench -- pull [--mib 200] [--runs 3]`: pulls of an image of
 * incompressible data in four layers from a local TLS registry (Debian's
 * docker-registry), against the tools a user would pick instead, in the
 * same run:
 *   download and verify  fleetlet pull --download-only  vs  skopeo copy docker://… oci:DIR
 *   pull and unpack      fleetlet pull                   vs  skopeo copy, then umoci unpack
 *   unpack alone         fleetlet's layer unpack         vs  tar -xzf of the same layer
 *   resume               bytes on the wire after kill -9 at ~50% and a second pull, vs the image size
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  createReadStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { pushImage } from "../../agent/registry/push.js";
import { unpackLayer } from "../../agent/store/layer-unpack.js";
import { loadNative } from "../../agent/system/native.js";
import { startCountingProxy } from "../support/counting-proxy.js";
import { startRegistry } from "../support/registry.js";

const FLEETLET = new URL("../../../bin/fleetlet.js", import.meta.url).pathname;

function timed(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", env: { ...process.env, ...opts.env } });
  const ms = performance.now() - t0;
  if (r.status !== 0)
    throw new Error(
      `${cmd} ${args.slice(0, 3).join(" ")} failed: ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`,
    );
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function row(name: string, ours: number[], theirs: number[], anchor: string, goal: string): void {
  const a = median(ours);
  const b = median(theirs);
  console.log(
    `${name.padEnd(22)} fleetlet ${(a / 1000).toFixed(2).padStart(6)} s   ${anchor.padEnd(26)} ${(b / 1000).toFixed(2).padStart(6)} s   ratio ${(a / b).toFixed(2)} (goal ${goal})`,
  );
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
    console.log(
      `pull: ${totalMiB} MiB of incompressible data in ${layers} layers, local TLS registry ${reg.host}, ${runs} runs each, medians`,
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

    const dl: number[] = [];
    const dlSkopeo: number[] = [];
    const full: number[] = [];
    const fullSkopeo: number[] = [];
    for (let r = 0; r < runs; r++) {
      const roots = [join(work, `r${r}a`), join(work, `r${r}b`), join(work, `o${r}a`), join(work, `o${r}b`)];
      dl.push(
        timed(process.execPath, [
          FLEETLET,
          "--root",
          roots[0]!,
          "--config",
          config,
          "pull",
          "--quiet",
          "--download-only",
          image,
        ]),
      );
      dlSkopeo.push(timed("skopeo", skopeo(roots[2]!)));
      full.push(timed(process.execPath, [FLEETLET, "--root", roots[1]!, "--config", config, "pull", "--quiet", image]));
      const t0 = performance.now();
      timed("skopeo", skopeo(roots[3]!));
      timed("umoci", ["unpack", "--image", `${roots[3]}:img`, join(roots[3]!, "bundle")]);
      fullSkopeo.push(performance.now() - t0);
      for (const d of roots) rmSync(d, { recursive: true, force: true });
    }
    console.log("");
    row("download and verify", dl, dlSkopeo, "skopeo copy", "<= 0.8");
    row("pull and unpack", full, fullSkopeo, "skopeo copy + umoci unpack", "<= 0.6");

    // Unpack alone: one layer blob, from disk, into an empty directory.
    const store = join(work, "unpack-store");
    execFileSync(process.execPath, [
      FLEETLET,
      "--root",
      store,
      "--config",
      config,
      "pull",
      "--quiet",
      "--download-only",
      image,
    ]);
    const blobDir = join(store, "blobs", "sha256");
    const blob = readdirSync(blobDir)
      .map((n) => join(blobDir, n))
      .sort((a, b) => statSync(b).size - statSync(a).size)[0]!;
    const native = loadNative().core;
    const ours: number[] = [];
    const tar: number[] = [];
    for (let r = 0; r < runs; r++) {
      const a = join(work, `u${r}a`);
      const b = join(work, `u${r}b`);
      mkdirSync(a);
      mkdirSync(b);
      const t0 = performance.now();
      await unpackLayer(createReadStream(blob, { highWaterMark: 1 << 20 }), {
        dest: a,
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
        native,
      });
      ours.push(performance.now() - t0);
      tar.push(timed("tar", ["-xzf", blob, "-C", b]));
      rmSync(a, { recursive: true });
      rmSync(b, { recursive: true });
    }
    row(`unpack (${(statSync(blob).size / 1048576).toFixed(0)} MiB layer)`, ours, tar, "tar -xzf", "<= 1.2");

    // Resume: kill -9 at about half, pull again, count what crossed the wire.
    const resumeRoot = join(work, "resume");
    const viaProxy = `${proxy.host}/bench/big:${layers - 1}`;
    const imageBytes = totalMiB * 1024 * 1024;
    proxy.reset();
    const child = spawn(
      process.execPath,
      [FLEETLET, "--root", resumeRoot, "--config", config, "pull", "--quiet", "--max-rate", "100M", viaProxy],
      { stdio: "ignore" },
    );
    const ingest = join(resumeRoot, "ingest");
    for (;;) {
      await sleep(20);
      const partial = existsSync(ingest)
        ? readdirSync(ingest).reduce((n, f) => n + statSync(join(ingest, f)).size, 0)
        : 0;
      const blobs = existsSync(join(resumeRoot, "blobs", "sha256"))
        ? readdirSync(join(resumeRoot, "blobs", "sha256")).reduce(
            (n, f) => n + statSync(join(resumeRoot, "blobs", "sha256", f)).size,
            0,
          )
        : 0;
      if (partial + blobs >= imageBytes / 2 || child.exitCode !== null) break;
    }
    child.kill("SIGKILL");
    await new Promise((resolve) => child.on("exit", resolve));
    const first = proxy.bytesDown();
    const second = await new Promise<number>((resolve, reject) => {
      const again = spawn(
        process.execPath,
        [FLEETLET, "--root", resumeRoot, "--config", config, "pull", "--quiet", viaProxy],
        { stdio: "ignore" },
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
