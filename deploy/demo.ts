/**
 * `npm run demo`: fleetlet on this machine, end to end, as a user would
 * drive it: first the isolation core through the real `fleetlet` CLI on a
 * busybox-static rootfs, then the agent with a local broker and registry
 * (demo-agent.ts). Every step checks what it shows; the demo exits 0 only
 * when all of them held. `--keep` leaves a container running
 * and the state directory in place to explore afterwards.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildBusyboxRootfs } from "../test/support/busybox-rootfs.js";
import { agentDemo } from "./demo-agent.js";
import { fleetDemo } from "./demo-fleet.js";

const BIN = fileURLToPath(new URL("../../bin/fleetlet.js", import.meta.url));
const keep = process.argv.includes("--keep");
const work = mkdtempSync(join(tmpdir(), "fleetlet-demo-"));
const root = join(work, "state");
const rootfs = buildBusyboxRootfs(join(work, "rootfs"));
const results: { step: string; ok: boolean }[] = [];

function fleetlet(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const shown = args
    .map((a) => (/[\s$;'"|]/.test(a) ? `'${a.replace(/'/g, "'\\''")}'` : a))
    .join(" ")
    .replace(rootfs, "./rootfs");
  console.log(`\n  $ fleetlet ${shown}`);
  const r = spawnSync(process.execPath, [BIN, "--root", root, ...args], { encoding: "utf8" });
  const indent = (s: string) =>
    s
      .replace(/\n$/, "")
      .split("\n")
      .map((l) => `    ${l}`)
      .join("\n");
  if (r.stdout) console.log(indent(r.stdout));
  if (r.stderr) console.log(indent(r.stderr));
  console.log(`    (exit ${r.status})`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function step(title: string, run: () => boolean): void {
  console.log(`\n== ${title}`);
  let ok = false;
  try {
    ok = run();
  } catch (err) {
    console.log(`    error: ${(err as Error).message}`);
  }
  console.log(ok ? "  ✓ as expected" : "  ✗ NOT as expected");
  results.push({ step: title, ok });
}

console.log(`fleetlet demo: state in ${root}, rootfs from Debian's busybox-static in ${rootfs}`);

step("A container: its own pid namespace, hostname and environment", () => {
  const r = fleetlet([
    "run",
    "--rm",
    "--rootfs",
    rootfs,
    "--hostname",
    "box1",
    "--memory",
    "32Mi",
    "--cpus",
    "0.25",
    "--pids",
    "64",
    "-e",
    "FOO=bar",
    "--",
    "/bin/sh",
    "-c",
    "echo $$ $FOO; hostname",
  ]);
  return r.status === 0 && r.stdout === "1 bar\nbox1\n";
});

step("Isolation seen from inside: network, capabilities, no_new_privs, seccomp, /dev", () => {
  const r = fleetlet([
    "run",
    "--rm",
    "--rootfs",
    rootfs,
    "--",
    "/bin/sh",
    "-c",
    "ls /sys/class/net; grep -E 'CapEff|NoNewPrivs|Seccomp:' /proc/self/status; ls /dev | tr '\\n' ' '; echo; unshare -U true 2>&1",
  ]);
  return (
    r.stdout.startsWith("lo\n") &&
    r.stdout.includes("CapEff:\t00000000800405fb") &&
    /NoNewPrivs:\s+1/.test(r.stdout) &&
    /Seccomp:\s+2/.test(r.stdout) &&
    r.stdout.includes("Operation not permitted")
  );
});

step("Memory limit: 64 MiB of work under --memory 32Mi is OOM-killed, and said so", () => {
  const r = fleetlet([
    "run",
    "--rm",
    "--rootfs",
    rootfs,
    "--memory",
    "32Mi",
    "--",
    "/bin/dd",
    "if=/dev/zero",
    "of=/dev/null",
    "bs=64M",
    "count=1",
  ]);
  return r.status === 137 && r.stderr.includes("killed: out of memory (limit 32 MiB)");
});

step("Pids limit: a fork loop stops at --pids 16", () => {
  const r = fleetlet([
    "run",
    "--rm",
    "--rootfs",
    rootfs,
    "--pids",
    "16",
    "--",
    "/bin/sh",
    "-c",
    'n=0; while [ $n -lt 100 ]; do sleep 10 & n=$((n+1)); echo -n "$n "; done',
  ]);
  const started = r.stdout.trim().split(/\s+/).map(Number);
  const n = started.at(-1) ?? 0;
  console.log(`    the shell started ${n} background processes before fork failed`);
  return r.status !== 0 && n > 0 && n < 16 && /can't fork/.test(r.stderr);
});

step("CPU limit: a busy loop under --cpus 0.25 gets about a quarter of a core", () => {
  const r = fleetlet([
    "run",
    "--rm",
    "--rootfs",
    rootfs,
    "--cpus",
    "0.25",
    "--",
    "/bin/sh",
    "-c",
    "timeout 2 sh -c 'while :; do :; done'; cat /proc/self/stat >/dev/null; times",
  ]);
  // `times` prints the children's user and system time: about 0.5 s of CPU in 2 s of wall time.
  const m = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(r.stdout.trim());
  const cpu = m ? Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4]) : Number.NaN;
  console.log(`    CPU used by the loop: ${cpu.toFixed(2)} s in 2 s → ${(cpu / 2).toFixed(2)} of a core`);
  return cpu / 2 > 0.15 && cpu / 2 < 0.35;
});

step("A detached container outlives its launcher; a new process finds it, stops it, removes it", () => {
  const started = fleetlet([
    "run",
    "-d",
    "--name",
    "web",
    "--rootfs",
    rootfs,
    "--memory",
    "16Mi",
    "--",
    "/bin/sh",
    "-c",
    "echo serving; exec sleep 600",
  ]);
  const ps = fleetlet(["ps"]);
  const logs = fleetlet(["logs", "web"]);
  if (keep) return started.status === 0 && ps.stdout.includes("web");
  const stopped = fleetlet(["stop", "-t", "1", "web"]);
  const rm = fleetlet(["rm", "web"]);
  return (
    started.status === 0 &&
    /^web\s+Up/m.test(ps.stdout) &&
    logs.stdout === "serving\n" &&
    stopped.status === 0 &&
    rm.status === 0
  );
});

step("Clear errors: a missing command exits 127, a bad limit is refused before anything starts", () => {
  const missing = fleetlet(["run", "--rm", "--rootfs", rootfs, "--", "/bin/not-there"]);
  const bad = fleetlet(["run", "--rm", "--rootfs", rootfs, "--memory", "lots", "--", "true"]);
  return missing.status === 127 && bad.status === 125 && bad.stderr.includes("--memory: expected a size");
});

async function asyncStep(title: string, run: () => Promise<boolean>): Promise<void> {
  console.log(`\n== ${title}`);
  let ok = false;
  try {
    ok = await run();
  } catch (err) {
    console.log(`    error: ${(err as Error).message}`);
  }
  console.log(ok ? "  ✓ as expected" : "  ✗ NOT as expected");
  results.push({ step: title, ok });
}

console.log("\n\n##### The agent: desired state over MQTT, pulled from a registry, rolled out and rolled back");
await agentDemo({
  work,
  rootfs,
  bins: { fleetlet: BIN, fleetctl: fileURLToPath(new URL("../../bin/fleetctl.js", import.meta.url)) },
  step: asyncStep,
});

console.log("\n\n##### The fleet: signed deployments rolled out in waves through an mTLS broker with per-device ACLs");
await fleetDemo({
  work,
  rootfs,
  bins: { fleetlet: BIN, fleetctl: fileURLToPath(new URL("../../bin/fleetctl.js", import.meta.url)) },
  step: asyncStep,
});

const failed = results.filter((r) => !r.ok);
console.log(
  `\n${results.length - failed.length} of ${results.length} steps as expected${failed.length ? `; not: ${failed.map((f) => f.step).join("; ")}` : ""}`,
);
if (keep) console.log(`kept: state in ${root} (try: npx fleetlet --root ${root} ps)`);
else rmSync(work, { recursive: true, force: true });
process.exitCode = failed.length === 0 ? 0 : 1;
