/**
 * What a process sees from inside a container started by `fleetlet run`:
 * each property is read from inside, on the real kernel.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { fleetlet } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

let root: string;
const rootfs = inject("busyboxRootfs");
const sh = (script: string, ...flags: string[]) =>
  fleetlet(root, ["run", "--rm", "--rootfs", rootfs, ...flags, "--", "/bin/sh", "-c", script]);

beforeAll(() => {
  root = freshRoot();
});
afterAll(async () => {
  await cleanupRoot(root);
});

function statusField(status: string, name: string): string {
  const m = new RegExp(`^${name}:\\s*(\\S+)`, "m").exec(status);
  if (!m) throw new Error(`${name} missing from /proc/self/status`);
  return m[1]!;
}

describe("fleetlet run isolation", () => {
  it("runs the issue's example: pid 1, the environment and the hostname", () => {
    const r = fleetlet(root, [
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
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("1 bar\nbox1\n");
    expect(r.status).toBe(0);
  });

  it("has only lo, up, in a new network namespace by default", () => {
    const r = sh("ls /sys/class/net; cat /sys/class/net/lo/operstate");
    expect(r.stdout.split("\n").filter(Boolean)).toEqual(["lo", "unknown"]);
  });

  it("shares the host's interfaces with --network host", () => {
    const r = sh("ls /sys/class/net", "--network", "host");
    expect(r.status).toBe(0);
    expect(r.stdout.split("\n").filter(Boolean).length).toBeGreaterThan(1);
  });

  it("sees its own root filesystem and no host paths", () => {
    const r = sh(`ls -A /; test -e ${root} && echo HOST-ROOT-VISIBLE`);
    expect(r.stdout.split("\n").filter(Boolean).sort()).toEqual([
      ".complete",
      "bin",
      "dev",
      "etc",
      "home",
      "proc",
      "root",
      "sys",
      "tmp",
      "var",
    ]);
    // Field 5 of mountinfo is the mount point: all of them are the container's own.
    const mountPoints = sh("cat /proc/self/mountinfo")
      .stdout.split("\n")
      .filter(Boolean)
      .map((l) => l.split(" ")[4]!);
    expect(mountPoints[0]).toBe("/");
    for (const m of mountPoints) expect(m).toMatch(/^\/(proc|dev|sys)?(\/|$)/);
  });

  it("keeps only the default capabilities, with no_new_privs and a seccomp filter", () => {
    const status = sh("cat /proc/self/status").stdout;
    const eff = BigInt(`0x${statusField(status, "CapEff")}`);
    const defaults = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 31].reduce((m, c) => m | (1n << BigInt(c)), 0n);
    expect(eff & (1n << 21n)).toBe(0n); // CAP_SYS_ADMIN
    expect(eff).toBe(defaults);
    expect(BigInt(`0x${statusField(status, "CapBnd")}`)).toBe(defaults);
    expect(statusField(status, "CapAmb")).toBe("0000000000000000");
    // Empty, as Docker's since CVE-2022-24769: nothing to pass on through file capabilities.
    expect(statusField(status, "CapInh")).toBe("0000000000000000");
    expect(statusField(status, "NoNewPrivs")).toBe("1");
    expect(statusField(status, "Seccomp")).toBe("2");
  });

  it("changes the capability set with --cap-add and --cap-drop", () => {
    const status = sh("cat /proc/self/status", "--cap-add", "NET_RAW", "--cap-drop", "ALL").stdout;
    expect(BigInt(`0x${statusField(status, "CapEff")}`)).toBe(1n << 13n);
  });

  it("refuses a new user namespace through the seccomp filter, which --seccomp unconfined lifts", () => {
    const denied = sh("unshare -U /bin/true; echo rc=$?");
    expect(denied.stdout).toContain("rc=1");
    expect(denied.stderr).toMatch(/Operation not permitted/);
    const allowed = sh("unshare -U /bin/true; echo rc=$?", "--seccomp", "unconfined");
    expect(allowed.stdout).toContain("rc=0");
  });

  it("cannot write /proc/sys and reads masked paths as empty", () => {
    const r = sh("echo 1 > /proc/sys/vm/drop_caches && echo WROTE; wc -c < /proc/timer_list; cat /proc/keys | wc -c");
    expect(r.stdout).not.toContain("WROTE");
    expect(r.stderr).toMatch(/Read-only file system/);
    expect(r.stdout.split("\n").filter(Boolean).map(Number)).toEqual([0, 0]);
    // The host's timer_list is not empty: the zero above is the mask at work.
    expect(readFileSync("/proc/timer_list").length).toBeGreaterThan(0);
    // Masked paths that this kernel lacks (kcore, acpi here) are simply absent.
    const absent = sh("for p in /proc/kcore /proc/acpi /proc/sched_debug; do if [ -e $p ]; then wc -c < $p; fi; done");
    expect(
      absent.stdout
        .split("\n")
        .filter(Boolean)
        .map(Number)
        .every((n) => n === 0),
    ).toBe(true);
  });

  it("mounts /sys read-only", () => {
    const r = sh("touch /sys/kernel/x 2>&1; echo rc=$?");
    expect(r.stdout).toMatch(/Read-only file system[\s\S]*rc=1/);
  });

  it("has only the listed nodes and links in /dev", () => {
    const r = sh("ls -A /dev; ls -l /dev/null /dev/ptmx /dev/fd");
    const names = r.stdout.split("\n").slice(0, 14);
    expect(names).toEqual([
      "core",
      "fd",
      "full",
      "null",
      "ptmx",
      "pts",
      "random",
      "shm",
      "stderr",
      "stdin",
      "stdout",
      "tty",
      "urandom",
      "zero",
    ]);
    expect(r.stdout).toMatch(/crw-rw-rw-\s+1 root\s+root\s+1,\s+3 .* \/dev\/null/);
    expect(r.stdout).toMatch(/\/dev\/ptmx -> pts\/ptmx/);
    expect(r.stdout).toMatch(/\/dev\/fd -> \/proc\/self\/fd/);
  });

  it("passes the environment and the working directory", () => {
    const r = sh("pwd; echo $A $B; echo $PATH", "-w", "/var/app", "-e", "A=1", "-e", "B=two words");
    expect(r.stdout).toBe("/var/app\n1 two words\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
  });

  it("runs as the --user given, by number or by the image's names, without capabilities", () => {
    expect(sh("id -u; id -g; grep CapEff /proc/self/status", "--user", "1000:1000").stdout).toBe(
      "1000\n1000\nCapEff:\t0000000000000000\n",
    );
    expect(sh("id -u; id -g", "--user", "nobody").stdout).toBe("65534\n65534\n");
    const bad = sh("true", "--user", "ghost");
    expect(bad.status).toBe(125);
    expect(bad.stderr).toContain('--user: no user "ghost"');
  });

  it("makes the rootfs read-only with --read-only, but not /dev/shm", () => {
    const r = sh("touch /x 2>&1; echo rc=$?; touch /dev/shm/ok && echo shm-ok", "--read-only");
    expect(r.stdout).toMatch(/Read-only file system\nrc=1\nshm-ok/);
  });

  it("keeps named volumes across containers, stored under the state dir", () => {
    expect(sh("echo kept > /data/file", "-v", "vol1:/data").status).toBe(0);
    expect(sh("cat /data/file", "-v", "vol1:/data:ro").stdout).toBe("kept\n");
    expect(sh("echo more > /data/other; echo rc=$?", "-v", "vol1:/data:ro").stdout).toContain("rc=1");
    expect(readFileSync(`${root}/volumes/vol1/data/file`, "utf8")).toBe("kept\n");
  });

  it("starts the command with no signal blocked, and none of Node's ignored ones (SIGPIPE, SIGXFSZ) ignored", () => {
    // cat as PID 1 sets no disposition of its own: what it shows is what it was given.
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--", "/bin/cat", "/proc/self/status"]);
    expect(r.status, r.stderr).toBe(0);
    expect(BigInt(`0x${statusField(r.stdout, "SigBlk")}`)).toBe(0n);
    // Signals 1 to 31; 32 and 33 are glibc's own, which its spawn hands on ignored.
    expect(BigInt(`0x${statusField(r.stdout, "SigIgn")}`) & 0x7fffffffn).toBe(0n);
  });

  it("limits open files", () => {
    const r = sh("ulimit -n");
    expect(Number(r.stdout)).toBe(1024);
  });
});

describe("fleetlet run exit codes and errors", () => {
  it("exits with the container's own status", () => {
    expect(sh("exit 42").status).toBe(42);
  });

  it("exits 127 for a command that does not exist, naming it", () => {
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--", "/bin/no-such-thing"]);
    expect(r.status).toBe(127);
    expect(r.stderr).toMatch(/exec `\/bin\/no-such-thing`: No such file or directory/);
    const byPath = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--", "no-such-thing"]);
    expect(byPath.status).toBe(127);
    expect(byPath.stderr).toMatch(/not found in \$PATH/);
  });

  it("exits 126 for a file that is not executable", () => {
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--", "/etc/passwd"]);
    expect(r.status).toBe(126);
    expect(r.stderr).toMatch(/exec `\/etc\/passwd`: Permission denied/);
  });

  it("exits 125 for a missing rootfs and starts nothing", () => {
    const r = fleetlet(root, ["run", "--rm", "--rootfs", `${root}/absent`, "--", "/bin/true"]);
    expect(r.status).toBe(125);
    expect(r.stderr).toContain(`rootfs ${root}/absent: no such directory`);
  });

  it("refuses a bad --memory value with a clear message before creating anything", () => {
    const before = fleetlet(root, ["ps", "-a", "--json"]).stdout;
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--memory", "32 bananas", "--", "/bin/true"]);
    expect(r.status).toBe(125);
    expect(r.stderr).toBe(
      'fleetlet: --memory: expected a size such as 32Mi, 512k or 1G, got "32 bananas" [E_INVALID_ARGUMENT]\n',
    );
    expect(fleetlet(root, ["ps", "-a", "--json"]).stdout).toBe(before);
  });

  it("refuses a second container with the same name", () => {
    expect(fleetlet(root, ["run", "-d", "--name", "twin", "--rootfs", rootfs, "--", "sleep", "30"]).status).toBe(0);
    const r = fleetlet(root, ["run", "--name", "twin", "--rootfs", rootfs, "--", "true"]);
    expect(r.status).toBe(125);
    expect(r.stderr).toContain("a container named twin already exists");
    expect(fleetlet(root, ["rm", "-f", "twin"]).status).toBe(0);
  });
});
