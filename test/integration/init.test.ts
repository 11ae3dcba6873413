/**
 * `fleetlet run --init` (and a service's `"init": true`): a minimal init is
 * PID 1, the command its child. Signals reach the command, orphans are
 * reaped, and the command's status comes back, on the real kernel.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Runtime } from "../../agent/runtime/runtime.js";
import { fleetlet } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

let root: string;
const rootfs = inject("busyboxRootfs");

beforeAll(() => {
  root = freshRoot();
});
afterAll(async () => {
  await cleanupRoot(root);
});

function run(args: string[]) {
  return fleetlet(root, ["run", ...args]);
}

function detached(name: string, args: string[], command: string[]): void {
  const r = run(["-d", "--name", name, ...args, "--rootfs", rootfs, "--", ...command]);
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
}

/** The container's PID 1 as the host sees it. */
function initPid(name: string): number {
  return JSON.parse(readFileSync(join(root, "containers", name, "running.json"), "utf8")).init.pid;
}

interface ContainerProcess {
  pid: number;
  state: string;
  cmdline: string;
}

/** Every process in the container's /proc (its own pid namespace), read from the host through PID 1's root. */
function containerProcesses(name: string): ContainerProcess[] {
  const proc = `/proc/${initPid(name)}/root/proc`;
  const out: ContainerProcess[] = [];
  for (const entry of readdirSync(proc).filter((e) => /^\d+$/.test(e))) {
    try {
      const status = readFileSync(join(proc, entry, "status"), "utf8");
      const cmdline = readFileSync(join(proc, entry, "cmdline"), "utf8")
        .replaceAll("\0", " ")
        .trim();
      out.push({ pid: Number(entry), state: /^State:\s+(\S)/m.exec(status)?.[1] ?? "?", cmdline });
    } catch (err) {
      // Gone between the listing and the read: it is no longer in the container.
      if ((err as NodeJS.ErrnoException).code !== "ENOENT" && (err as NodeJS.ErrnoException).code !== "ESRCH")
        throw err;
    }
  }
  return out;
}

function stopAndRemove(name: string): { ms: number; stdout: string } {
  const t0 = Date.now();
  const r = fleetlet(root, ["stop", name]);
  const ms = Date.now() - t0;
  expect(r.stderr).toBe("");
  expect(fleetlet(root, ["rm", name]).status).toBe(0);
  return { ms, stdout: r.stdout };
}

describe("fleetlet run --init", () => {
  it("makes the init PID 1 and the command its child, the init's binary read-only at /dev/init", () => {
    const r = run([
      "--rm",
      "--init",
      "--read-only",
      "--rootfs",
      rootfs,
      "--",
      "/bin/sh",
      "-c",
      "echo $$ $PPID; tr '\\0' ' ' < /proc/1/cmdline; echo; readlink /proc/1/exe; echo x > /dev/init; echo x >> /proc/1/exe; ls /proc/1/fd | tr '\\n' ' '",
    ]);
    expect(r.status).toBe(0);
    const [ids, cmdline, exe, fds] = r.stdout.split("\n");
    expect(ids).toBe("2 1");
    expect(cmdline).toMatch(/^\/dev\/init init --error-fd 3 -- \/bin\/sh -c /);
    expect(exe).toBe("/dev/init");
    // Neither the bind nor the binary under it can be written from inside.
    expect(r.stderr).toMatch(/can't create \/dev\/init: Read-only file system/);
    expect(r.stderr).toMatch(/can't create \/proc\/1\/exe: (Read-only file system|Text file busy)/);
    // The shim's error pipe went with the command's exec: the init holds stdio only.
    expect(fds!.trim().split(" ")).toEqual(["0", "1", "2"]);
  });

  it("runs the init with the command's user, capabilities and seccomp filter", () => {
    const r = run([
      "--rm",
      "--init",
      "--user",
      "1000:1000",
      "--rootfs",
      rootfs,
      "--",
      "/bin/sh",
      "-c",
      "echo $PPID; grep -E '^(Uid|Gid|CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/1/status",
    ]);
    expect(r.stderr).toBe("");
    expect(r.stdout.split("\n")).toEqual([
      "1",
      "Uid:\t1000\t1000\t1000\t1000",
      "Gid:\t1000\t1000\t1000\t1000",
      "CapPrm:\t0000000000000000",
      "CapEff:\t0000000000000000",
      "NoNewPrivs:\t1",
      "Seccomp:\t2",
      "",
    ]);
  });

  it("leaves PID 1 to the command without --init", () => {
    const r = run(["--rm", "--rootfs", rootfs, "--", "/bin/sh", "-c", "echo $$; ls /dev/init"]);
    expect(r.stdout).toBe("1\n");
    expect(r.stderr).toMatch(/\/dev\/init: No such file or directory/);
  });

  it.each([
    ["exit 3", 3],
    ["exit 0", 0],
    ["kill -USR1 $$", 128 + 10],
    ["kill -TERM $$", 128 + 15],
    ["kill -KILL $$", 128 + 9],
  ])("passes the command's status through: %s gives %i", (script, code) => {
    const r = run(["--rm", "--init", "--rootfs", rootfs, "--", "/bin/sh", "-c", script]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(code);
  });

  it("reports a command that cannot be exec'd as it would without an init", () => {
    for (const init of [["--init"], []]) {
      const r = run(["--rm", ...init, "--rootfs", rootfs, "--", "no-such-command"]);
      expect(r.status).toBe(127);
      expect(r.stderr).toMatch(/exec `no-such-command`: executable file not found in \$PATH \[E_COMMAND_NOT_FOUND\]/);
    }
  });

  it("stops a sleep at once with an init, and only at the stop timeout without", () => {
    detached("sleep-init", ["--init", "--stop-timeout", "5"], ["sleep", "1000"]);
    detached("sleep-bare", ["--stop-timeout", "5"], ["sleep", "1000"]);
    const withInit = stopAndRemove("sleep-init");
    const without = stopAndRemove("sleep-bare");
    // The init forwards SIGTERM and sleep dies of it; as PID 1 itself sleep ignores it until SIGKILL.
    expect(withInit.stdout).toBe("sleep-init exited with 143\n");
    expect(without.stdout).toBe("sleep-bare exited with 137\n");
    // Well before the 5 s stop timeout; the figure holds a CLI's start, which a loaded machine slows.
    expect(withInit.ms).toBeLessThan(4000);
    expect(without.ms).toBeGreaterThanOrEqual(4500);
  });

  it.each([
    ["HUP", 1],
    ["INT", 2],
    ["QUIT", 3],
    ["USR1", 10],
    ["USR2", 12],
    ["TERM", 15],
  ])("forwards SIG%s to the command, which dies of it", async (signal, number) => {
    const name = `sig-${signal}`;
    detached(name, ["--init"], ["sleep", "1000"]);
    expect(fleetlet(root, ["kill", "-s", signal, name]).status).toBe(0);
    const exitFile = join(root, "containers", name, "exit.json");
    const exit = await waitFor(`${name} to exit`, () => {
      const text = readFileSync(exitFile, "utf8");
      return text ? JSON.parse(text) : undefined;
    });
    // The init's own status: 128+N for the signal that killed its command.
    expect(exit).toMatchObject({ exitCode: 128 + number, signal: 0 });
    expect(fleetlet(root, ["rm", name]).status).toBe(0);
  });

  it("reaps orphans: no zombie stays in the container with an init, one does without", async () => {
    // The subshell starts an orphan and exits at once; the orphan is
    // re-parented to PID 1, writes /tmp/orphan-done and exits too.
    const script = "(sh -c 'sleep 0.2; touch /tmp/orphan-done' &) ; exec sleep 1000";
    detached("orphans-init", ["--init"], ["/bin/sh", "-c", script]);
    detached("orphans-bare", [], ["/bin/sh", "-c", script]);
    for (const name of ["orphans-init", "orphans-bare"]) {
      const done = `/proc/${initPid(name)}/root/tmp/orphan-done`;
      // Settled: the orphan has finished, and nothing but the init and sleep is alive.
      await waitFor(`the orphan in ${name} to finish`, () => {
        if (!existsSync(done)) return false;
        const alive = containerProcesses(name).filter((p) => p.state !== "Z");
        return alive.every((p) => p.cmdline === "sleep 1000" || p.cmdline.startsWith("/dev/init init"));
      });
    }
    // Nothing else would ever reap a zombie of PID 1; the init does it as soon as it hears SIGCHLD.
    await waitFor("the init to reap the orphan", () => containerProcesses("orphans-init").length === 2, {
      timeoutMs: 5000,
    });
    const zombies = Object.fromEntries(
      ["orphans-init", "orphans-bare"].map((n) => [n, containerProcesses(n).filter((p) => p.state === "Z").length]),
    );
    expect(zombies).toEqual({ "orphans-init": 0, "orphans-bare": 1 });
    expect(containerProcesses("orphans-init").map((p) => [p.pid, p.cmdline.split(" ")[0]])).toEqual([
      [1, "/dev/init"],
      [2, "sleep"],
    ]);
    stopAndRemove("orphans-init");
    expect(fleetlet(root, ["rm", "-f", "orphans-bare"]).status).toBe(0);
  });
});

describe("a start that fails while the container's rootfs is built", () => {
  it("names the failing step every time, never the go pipe the dead init closed", async () => {
    // The init fails making the mount point; the shim may be between its two
    // go-pipe writes then, and must report the init's error, not its own EPIPE.
    const runtime = new Runtime({ root });
    const messages = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const { id } = runtime.create({
        layers: [rootfs],
        command: ["true"],
        init: i % 2 === 0,
        volumes: [{ name: "data", target: "/etc/passwd/x" }],
      });
      const failed = await runtime.start(id).then(
        () => undefined,
        (err: Error) => err,
      );
      messages.add(failed?.message.replace(id, "ID") ?? "started");
      await runtime.delete(id, { force: true });
    }
    await runtime.settled();
    expect([...messages]).toEqual(["container ID: create mount point `/etc/passwd/x` in the rootfs: Not a directory"]);
  });
});
