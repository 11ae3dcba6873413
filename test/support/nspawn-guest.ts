/**
 * A Debian guest booted with systemd-nspawn, systemd as its PID 1, for the
 * tests that need a real systemd on a machine that has none. The root
 * filesystem comes from scripts/nspawn-rootfs.sh (debootstrapped once and
 * cached); the guest boots it with --volatile=overlay, so every boot starts
 * from the same clean tree and nothing it writes outlives it, except in the
 * directories bound into it. Commands run in the guest through nsenter into
 * its PID 1's namespaces (`systemd-run -M` needs a registered machine, and
 * --register=no registers none). nspawn runs in a cgroup of its own under each
 * hierarchy it uses, so that what it and the guest leave behind is removed
 * with it.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { REPO } from "./release-bundle.js";
import { waitFor } from "./wait-for.js";

/** A cold debootstrap took 1m19s here; a loaded machine and a slow mirror get ten times that. */
export const ROOTFS_TIMEOUT_MS = 900_000;

/** What the tests need to boot a guest, as the Debian packages that bring them. */
const TOOLS: [string, string][] = [
  ["/usr/sbin/debootstrap", "debootstrap"],
  ["/usr/bin/systemd-nspawn", "systemd-container"],
  ["/usr/bin/nsenter", "util-linux"],
];

/** Why a guest cannot be booted here, by name, or null when it can. */
export function missingTools(): string | null {
  const missing = TOOLS.filter(([bin]) => !existsSync(bin));
  if (missing.length === 0) return null;
  return `cannot boot a systemd guest: ${missing.map(([bin, pkg]) => `${bin} (Debian package ${pkg})`).join(", ")} missing; scripts/bootstrap.sh installs them`;
}

/** The cached guest root filesystem, debootstrapped first when there is none. */
export function guestRootfs(): string {
  const r = spawnSync("sh", [join(REPO, "scripts/nspawn-rootfs.sh")], {
    encoding: "utf8",
    timeout: ROOTFS_TIMEOUT_MS,
  });
  if (r.status !== 0) throw new Error(`scripts/nspawn-rootfs.sh failed (${r.status ?? r.signal}): ${r.stderr}`);
  return r.stdout.trim();
}

export interface GuestOptions {
  rootfs: string;
  name: string;
  /** host path → guest path, writable */
  bind?: [string, string][];
  /** host path → guest path, read-only */
  bindRo?: [string, string][];
  /** Boot the guest on the unified cgroup2 hierarchy rather than what nspawn picks for this host. */
  unified?: boolean;
}

export interface Guest {
  pid: number;
  /** Runs a command in the guest; stdout, stderr and the exit status. */
  run(args: string[], timeoutMs?: number): { status: number | null; stdout: string; stderr: string };
  /** Runs a command in the guest and returns its stdout, throwing with its stderr if it fails. */
  sh(script: string): string;
  log(): string;
  stop(): Promise<void>;
}

const HIERARCHIES = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup"].filter(
  (h, i, all) => existsSync(join(h, "cgroup.procs")) && (i < 2 || !all.slice(0, 2).some((o) => existsSync(o))),
);

/** Removes a cgroup and the ones under it, deepest first; true once it is gone. */
function removeTree(dir: string): true {
  if (!existsSync(dir)) return true;
  for (const e of readdirSync(dir)) if (statSync(join(dir, e)).isDirectory()) removeTree(join(dir, e));
  rmdirSync(dir);
  return true;
}

/**
 * Stops the guest: the first SIGTERM asks it to power off, a second one ends
 * it at once; whatever it ran (containers in nested pid namespaces too) dies
 * with its pid namespace. Then nspawn's cgroups go.
 */
async function stopGuest(nspawn: ChildProcess, exited: Promise<void>, cgroup: string): Promise<void> {
  const alive = () => nspawn.exitCode === null && nspawn.signalCode === null;
  nspawn.kill("SIGTERM");
  await Promise.race([exited, sleep(20_000)]);
  if (alive()) nspawn.kill("SIGTERM");
  await Promise.race([exited, sleep(10_000)]);
  if (alive()) nspawn.kill("SIGKILL");
  await exited;
  for (const h of HIERARCHIES) {
    // The guest's last processes may still be leaving their cgroups: rmdir says EBUSY until they have.
    await waitFor(`${h}/${cgroup} removed`, () => removeTree(join(h, cgroup)), {
      timeoutMs: 10_000,
      intervalMs: 100,
    });
  }
}

/** Boots the guest and waits until its systemd reports the system running. */
export async function bootGuest(opts: GuestOptions): Promise<Guest> {
  const cgroup = `fleetlet-nspawn-${opts.name}-${process.pid}`;
  for (const h of HIERARCHIES) mkdirSync(join(h, cgroup));
  const args = ["-D", opts.rootfs, "--volatile=overlay", "--boot", "--register=no", "--keep-unit"];
  args.push("--console=passive", `--machine=${opts.name}`);
  for (const [from, to] of opts.bind ?? []) args.push(`--bind=${from}:${to}`);
  for (const [from, to] of opts.bindRo ?? []) args.push(`--bind-ro=${from}:${to}`);
  const join_ = HIERARCHIES.map((h) => `echo $$ > ${join(h, cgroup, "cgroup.procs")}`).join("; ");
  const env = { ...process.env, ...(opts.unified ? { SYSTEMD_NSPAWN_UNIFIED_HIERARCHY: "1" } : {}) };
  const nspawn: ChildProcess = spawn("sh", ["-c", `${join_}; exec systemd-nspawn "$@"`, "sh", ...args], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  nspawn.stdout!.on("data", (d) => {
    out += d;
  });
  nspawn.stderr!.on("data", (d) => {
    out += d;
  });
  const exited = new Promise<void>((resolve) => nspawn.once("exit", () => resolve()));
  const children = () => readFileSync(`/proc/${nspawn.pid}/task/${nspawn.pid}/children`, "utf8").trim();
  const pid = await waitFor("the guest's PID 1", () => (nspawn.exitCode === null ? Number(children()) : 0), {
    timeoutMs: 60_000,
    intervalMs: 100,
    context: () => out,
  });
  const run: Guest["run"] = (cmd, timeoutMs = 120_000) => {
    const r = spawnSync("nsenter", ["-t", String(pid), "-a", ...cmd], { encoding: "utf8", timeout: timeoutMs });
    if (r.error) throw r.error;
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const sh = (script: string) => {
    const r = run(["/bin/sh", "-c", script]);
    if (r.status !== 0) throw new Error(`guest: ${script}: exit ${r.status}: ${r.stderr}`);
    return r.stdout;
  };
  // "degraded" still means booted: some unit of the minimal image may fail without a console or a network.
  await waitFor(
    "the guest's systemd to finish booting",
    () => /^(running|degraded)$/m.test(run(["systemctl", "is-system-running"]).stdout),
    {
      timeoutMs: 120_000,
      intervalMs: 250,
      context: () => `${run(["systemctl", "is-system-running"]).stdout}; nspawn: ${out}`,
    },
  );
  const stop = () => stopGuest(nspawn, exited, cgroup);
  return { pid, run, sh, log: () => out, stop };
}
