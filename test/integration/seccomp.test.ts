/**
 * The default seccomp filter, probed call by call with all capabilities
 * granted, so that only the filter can be what refuses them.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { fleetlet } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const EPERM = 1;
const ENOSYS = 38;
let root: string;
let probeLayer: string;
const rootfs = inject("busyboxRootfs");

beforeAll(() => {
  root = freshRoot();
  probeLayer = mkdtempSync(join(tmpdir(), "fleetlet-probe-"));
  mkdirSync(join(probeLayer, "usr", "bin"), { recursive: true });
  const source = fileURLToPath(new URL("../support/seccomp-probe.c", import.meta.url));
  execFileSync("gcc", ["-static", "-O1", "-o", join(probeLayer, "usr", "bin", "seccomp-probe"), source]);
});
afterAll(async () => {
  await cleanupRoot(root);
  rmSync(probeLayer, { recursive: true, force: true });
});

function probe(...flags: string[]): Map<string, number> {
  // Two layers: the probe on top of the busybox image.
  const r = fleetlet(root, [
    "run",
    "--rm",
    "--rootfs",
    probeLayer,
    "--rootfs",
    rootfs,
    "--cap-add",
    "ALL",
    ...flags,
    "--",
    "/usr/bin/seccomp-probe",
  ]);
  expect(r.status, r.stderr).toBe(0);
  return new Map(
    r.stdout
      .trim()
      .split("\n")
      .map((l) => [l.split(" ")[0]!, Number(l.split(" ")[1])]),
  );
}

const DENIED = [
  "init_module",
  "finit_module",
  "delete_module",
  "kexec_load",
  "reboot",
  "swapon",
  "swapoff",
  "bpf",
  "perf_event_open",
  "add_key",
  "keyctl",
  "open_by_handle_at",
  "userfaultfd",
  "ptrace",
  "mount",
  "pidfd_getfd",
  "process_madvise",
  "fanotify_init",
  "quotactl_fd",
  "personality_addr_no_randomize",
  "unshare_user",
  "unshare_mount",
  "clone_newns",
  "socket_alg",
  "socket_vsock",
  "socket_vsock_high_bits",
  "sysfs",
  "ustat",
];
/** Calls newer than the policy that this kernel has (all since Linux 6.10, open_tree_attr since 6.15). */
const NEWER = ["statmount", "listmount", "mseal", "open_tree_attr"];
const ALLOWED = ["getpid", "socket_unix", "clone_process", "unshare_fs", "personality_query"];
const SIGSYS = 31;
const SIGSEGV = 11;

describe("the default seccomp filter", () => {
  let filtered: Map<string, number>;
  let unconfined: Map<string, number>;
  beforeAll(() => {
    filtered = probe();
    unconfined = probe("--seccomp", "unconfined");
  });

  it("refuses module, kexec, reboot, swap, bpf, perf, key, handle, ptrace, mount, pidfd_getfd, process_madvise, fanotify, quota, personality, namespace and AF_ALG/AF_VSOCK calls with EPERM", () => {
    for (const name of DENIED) expect([name, filtered.get(name)]).toEqual([name, EPERM]);
  });

  it("answers ENOSYS for calls it does not know, including newer ones this kernel has, and for clone3", () => {
    for (const name of [...NEWER, "unknown_1000", "clone3"]) expect([name, filtered.get(name)]).toEqual([name, ENOSYS]);
    for (const name of NEWER)
      expect([name, unconfined.get(name)], `the kernel implements ${name}`).not.toEqual([name, ENOSYS]);
  });

  it("lets ordinary calls through: getpid, an AF_UNIX socket, a new process, unshare(CLONE_FS), the personality query", () => {
    for (const name of ALLOWED) expect([name, filtered.get(name)]).toEqual([name, 0]);
  });

  it("kills a call from the x32 or the i386 ABI with SIGSYS (i386: where the kernel runs such calls at all)", () => {
    expect(process.arch, "this test probes the ABIs of x86_64").toBe("x64");
    expect(filtered.get("x32_getpid")).toBe(-SIGSYS);
    expect(unconfined.get("x32_getpid"), "x32 calls reach the kernel").not.toBe(-SIGSYS);
    if (unconfined.get("i386_getpid") === 0) {
      expect(filtered.get("i386_getpid")).toBe(-SIGSYS);
      return;
    }
    // A kernel without ia32 emulation (CONFIG_IA32_EMULATION off, or ia32_emulation=0) faults `int 0x80`
    // before any filter sees it: the ABI is unreachable there, with or without the filter.
    console.warn("seccomp: this kernel runs no i386 calls (ia32 emulation is off): checked unreachable, not filtered");
    expect(unconfined.get("i386_getpid")).toBe(-SIGSEGV);
    expect(filtered.get("i386_getpid")).toBe(-SIGSEGV);
  });

  it("is what refused them: without it the kernel answers the same calls otherwise", () => {
    const answeredByKernel = DENIED.filter((name) => unconfined.get(name) !== EPERM);
    // With every capability and no filter, most of these reach the kernel's argument checks.
    expect(answeredByKernel.length).toBeGreaterThanOrEqual(20);
    expect(unconfined.get("reboot")).toBe(22); // EINVAL: the magic numbers are wrong
    expect(unconfined.get("clone3")).not.toBe(ENOSYS);
    expect(unconfined.get("socket_vsock_high_bits")).not.toBe(EPERM);
  });
});
