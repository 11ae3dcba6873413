/**
 * The healthcheck exec helper as the container sees it. The helper forks the
 * command's process into the container's pid namespace, where it sits as
 * root until its exec: container root can find it in /proc (its name is
 * still fleetlet-shim). A ptrace stopper (test/support/exec-stopper.c)
 * holds it at the entry of that exec, as a loaded machine might, and a
 * process in the container then tries to read its environment, open its
 * executable (the runc CVE-2019-5736 pattern) and look at its descriptors.
 * The shim is started as an agent under systemd would start it: with a
 * descriptor it never marked close-on-exec (the host's `/`) and an OOM score
 * of its own, and the agent's environment holds a FLEETLET_SECRET.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { DEFAULT_PATH } from "../../agent/runtime/proc-defaults.js";
import { Runtime } from "../../agent/runtime/runtime.js";
import { loadNative } from "../../agent/system/native.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const SECRET = `hunter2-${process.pid}`;
let root: string;
let tools: string;
const rootfs = inject("busyboxRootfs");

/** Waits for the go, finds the held process and reports what it could reach. */
const SPY = `
until [ -e /x/go ]; do sleep 0.05; done
for d in /proc/[0-9]*; do
  [ "$(cat $d/comm 2>/dev/null)" = fleetlet-shim ] || continue
  {
    echo "oom $(cat $d/oom_score_adj)"
    if cat $d/environ > /tmp/env 2> /tmp/err; then echo "environ read: $(tr '\\0' ' ' < /tmp/env)"; else echo "environ refused: $(cat /tmp/err)"; fi
    if head -c 4 $d/exe > /dev/null 2> /tmp/err; then echo "exe opened"; else echo "exe refused: $(cat /tmp/err)"; fi
    if ls $d/fd > /tmp/fds 2> /tmp/err; then echo "fds listed: $(cat /tmp/fds | tr '\\n' ' ')"; else echo "fds refused: $(cat /tmp/err)"; fi
  } > /x/report 2>&1
done
touch /x/done
exec sleep 600
`;

/** What the healthcheck command itself was given: its OOM score, descriptors and environment. */
const CHECK = `echo "oom $(cat /proc/self/oom_score_adj)"; ls /proc/$$/fd; tr '\\0' '\\n' < /proc/$$/environ | sort`;

beforeAll(() => {
  root = freshRoot();
  tools = mkdtempSync(join(tmpdir(), "fleetlet-exec-helper-"));
  const source = fileURLToPath(new URL("../support/exec-stopper.c", import.meta.url));
  execFileSync("gcc", ["-O1", "-o", join(tools, "exec-stopper"), source]);
  // systemd gives the agent -900, which needs CAP_SYS_RESOURCE to set; any
  // score of the agent's own shows whether the command inherits it.
  writeFileSync(
    join(tools, "shim"),
    [
      "#!/bin/sh",
      "exec 7</",
      "echo 500 > /proc/self/oom_score_adj",
      `exec ${join(tools, "exec-stopper")} ${join(tools, "release")} -- ${loadNative().shimPath} "$@"`,
      "",
    ].join("\n"),
  );
  chmodSync(join(tools, "shim"), 0o755);
});
afterAll(async () => {
  await cleanupRoot(root);
  rmSync(tools, { recursive: true, force: true });
});

describe("the healthcheck exec helper", () => {
  it("shows container root neither the agent's environment nor its executable or descriptors", async () => {
    const runtime = new Runtime({ root });
    const wrapped = new Runtime({ root, native: { core: loadNative().core, shimPath: join(tools, "shim") } });
    runtime.create({
      name: "spied",
      layers: [rootfs],
      command: ["/bin/sh", "-c", SPY],
      env: ["APP=1"],
      volumes: [{ name: "spy", target: "/x" }],
    });
    await runtime.start("spied");
    const spy = join(root, "volumes", "spy", "data");
    process.env.FLEETLET_SECRET = SECRET;
    let hostView: string;
    let result: Awaited<ReturnType<Runtime["exec"]>>;
    try {
      const exec = wrapped.exec("spied", ["/bin/sh", "-c", CHECK], { timeoutMs: 60_000 });
      const held = join(tools, "release.held");
      await waitFor("the command held before its exec", () => existsSync(held), { timeoutMs: 30_000 });
      writeFileSync(join(spy, "go"), "");
      await waitFor("the report from inside", () => existsSync(join(spy, "done")), { timeoutMs: 30_000 });
      // The host's root (CAP_SYS_PTRACE) may read what container root may not.
      hostView = readFileSync(`/proc/${readFileSync(held, "utf8").trim()}/environ`, "utf8");
      writeFileSync(join(tools, "release"), "");
      result = await exec;
    } finally {
      delete process.env.FLEETLET_SECRET;
    }
    const report = readFileSync(join(spy, "report"), "utf8");
    expect(report).not.toContain(SECRET);
    expect(report).toMatch(/^environ refused: .*Permission denied$/m);
    expect(report).toMatch(/^exe refused: .*Permission denied$/m);
    // The numbers of its descriptors are listable (/proc/PID/fd belongs to root); what
    // they lead to is not. None beyond stdio is left, even before the exec.
    expect(report).toMatch(/^fds listed: 0 1 2 $/m);
    expect(report).toMatch(/^oom 0$/m);
    expect(hostView.replaceAll("\0", "")).toBe("");

    expect(result.exitCode).toBe(0);
    // ls, the shell's child, lists the shell's descriptors: the ones the command was given.
    expect(result.output).toBe(
      ["oom 0", "0", "1", "2", "APP=1", "HOME=/root", "HOSTNAME=spied", `PATH=${DEFAULT_PATH}`, ""].join("\n"),
    );
  });
});
