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

describe("the default seccomp filter", () => {
  it("refuses module, kexec, reboot, swap, bpf, perf, key, handle, userfaultfd, ptrace and user-namespace calls with EPERM", () => {
    const results = probe();
    const denied = [
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
      "unshare_user",
    ];
    for (const name of denied) expect([name, results.get(name)]).toEqual([name, EPERM]);
    expect(results.get("clone3")).toBe(ENOSYS);
  });

  it("is what refused them: without it the kernel answers the same calls otherwise", () => {
    const results = probe("--seccomp", "unconfined");
    const answeredByKernel = [...results.entries()].filter(([, errno]) => errno !== EPERM);
    // With every capability and no filter, most of these reach the kernel's argument checks.
    expect(answeredByKernel.length).toBeGreaterThanOrEqual(10);
    expect(results.get("reboot")).toBe(22); // EINVAL: the magic numbers are wrong
    expect(results.get("clone3")).not.toBe(ENOSYS);
  });
});
