/**
 * Where a container's init starts on cgroup v2: born in its cgroup (clone3
 * with CLONE_INTO_CGROUP, Linux 5.7), so that no move through cgroup.procs
 * waits on the kernel's global lock; on an older kernel, forked and then
 * moved. Both paths run here, on the host's cgroup2 mount, by a Runtime with
 * a v2 layout rooted there (the host's own layout is hybrid); the older one is
 * forced with `cgroupMove`, and taken when clone3 is refused (strace injects
 * the refusal). The runtime runs from dist/ in a child process under
 * strace, which shows which call placed the init.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmdirSync, rmSync, statfsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CGROUP2_SUPER_MAGIC, detectCgroupLayout } from "../../agent/runtime/cgroup-layout.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const rootfs = inject("busyboxRootfs");
const unified = detectCgroupLayout().unified;
const parent = `fleetlet-test-birth-${process.pid}`;
const dist = new URL("../../dist/agent/", import.meta.url).pathname;
let root: string;
const logs = mkdtempSync(join(tmpdir(), "fleetlet-strace-"));

beforeAll(() => {
  if (!unified || statfsSync(unified).type !== CGROUP2_SUPER_MAGIC)
    throw new Error("no cgroup2 mount on this host: where a v2 init starts cannot be tested here");
  if (spawnSync("strace", ["-V"]).status !== 0) throw new Error("strace is missing (Debian package strace)");
  root = freshRoot();
});
afterAll(async () => {
  await cleanupRoot(root);
  rmSync(logs, { recursive: true, force: true });
  if (unified && existsSync(join(unified, parent))) rmdirSync(join(unified, parent));
});

/** The cgroup2 line of /proc/PID/cgroup (on this hybrid host, the v1 hierarchies' lines come before it). */
const v2Line = (cgroup: string) => cgroup.split("\n").find((l) => l.startsWith("0::"));

/**
 * strace's lines, each call whole: with -f, a call that another thread's
 * output cuts short is written as `PID  call(args <unfinished ...>` and later
 * `PID  <... call resumed>) = result`; the two are joined into one line.
 */
function wholeCalls(text: string): string[] {
  const cut = new Map<string, string>();
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const m = /^(\d+)\s+(.*)$/.exec(line);
    const resumed = m && /^<\.\.\. \S+ resumed>(.*)$/.exec(m[2]!);
    if (m && line.endsWith("<unfinished ...>")) cut.set(m[1]!, line.slice(0, -"<unfinished ...>".length));
    else if (m && resumed && cut.has(m[1]!)) {
      out.push(cut.get(m[1]!)! + resumed[1]!);
      cut.delete(m[1]!);
    } else out.push(line);
  }
  return out;
}

/** Starts a container on the v2 layout under strace; returns its id, its init's cgroup, and strace's lines for
 * clone3 into a cgroup and for opening the container's cgroup.procs (a move). */
function startTraced(cgroupMove: boolean, straceArgs: string[] = []) {
  const script = `
    const { Runtime } = await import(${JSON.stringify(`${dist}runtime/runtime.js`)});
    const { Cgroups } = await import(${JSON.stringify(`${dist}runtime/cgroup.js`)});
    const { readFileSync } = await import("node:fs");
    const cgroups = new Cgroups({ mode: "v2", v1: new Map(), unified: ${JSON.stringify(unified)} }, ${JSON.stringify(parent)});
    const runtime = new Runtime({ root: ${JSON.stringify(root)}, cgroups, cgroupMove: ${cgroupMove} });
    const c = runtime.create({ layers: [${JSON.stringify(rootfs)}], command: ["/bin/sleep", "30"] });
    const { pid } = await runtime.start(c.id);
    const cgroup = readFileSync("/proc/" + pid + "/cgroup", "utf8");
    await runtime.delete(c.id, { force: true });
    console.log(JSON.stringify({ id: c.id, cgroup }));
  `;
  const log = join(logs, `clone3-${cgroupMove}-${straceArgs.length}.log`);
  const r = spawnSync(
    "strace",
    [
      "-f",
      "-qq",
      "-e",
      "trace=clone3,openat",
      ...straceArgs,
      "-o",
      log,
      process.execPath,
      "--input-type=module",
      "-e",
      script,
    ],
    {
      encoding: "utf8",
      timeout: 60_000,
    },
  );
  expect(r.status, r.stderr).toBe(0);
  const { id, cgroup } = JSON.parse(r.stdout) as { id: string; cgroup: string };
  const lines = wholeCalls(readFileSync(log, "utf8"));
  const intoCgroup = lines.filter((l) => l.includes("CLONE_INTO_CGROUP"));
  const moves = lines.filter((l) => l.includes(`${parent}/${id}/cgroup.procs`));
  return { id, cgroup, intoCgroup, moves };
}

describe("a container's init on cgroup v2", () => {
  it("is born in its cgroup: clone3 places it, and nothing moves it", () => {
    const { id, cgroup, intoCgroup, moves } = startTraced(false);
    expect(v2Line(cgroup)).toBe(`0::/${parent}/${id}`);
    expect(intoCgroup).toHaveLength(1);
    expect(intoCgroup[0]).toMatch(/= [1-9]\d*$/);
    expect(moves).toEqual([]);
  });

  it("is forked and then moved into it when clone3 is refused, as a seccomp profile older than clone3 refuses it", () => {
    // strace makes every clone3 fail with ENOSYS (glibc then makes node's threads with clone).
    const { id, cgroup, intoCgroup, moves } = startTraced(false, ["-e", "inject=clone3:error=ENOSYS"]);
    expect(v2Line(cgroup)).toBe(`0::/${parent}/${id}`);
    expect(intoCgroup).toHaveLength(1);
    expect(intoCgroup[0]).toMatch(/ENOSYS/);
    expect(moves).toHaveLength(1);
  });

  it("is forked and then moved into it where clone3 cannot place it (forced here, as before Linux 5.7)", () => {
    const { id, cgroup, intoCgroup, moves } = startTraced(true);
    expect(v2Line(cgroup)).toBe(`0::/${parent}/${id}`);
    expect(intoCgroup).toEqual([]);
    expect(moves).toHaveLength(1);
  });
});
