/**
 * The agent's own process on a small device: the Node flags it re-executes
 * itself with (same pid), giving memory back once quiet, and a pinned image
 * that needs no registry.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AGENT_NODE_FLAGS, BULK_MALLOC_MARK, BULK_MALLOC_TUNABLES } from "../../agent/system/process-memory.js";
import { agentStarted, FLEETLET_BIN, fleetctl, fleetlet, runCli } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const NATIVE = new URL("../../native/build/Release/fleetlet_native.node", import.meta.url).pathname;
let work: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-agent-process-"));
});

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

/** Starts `fleetlet agent` with no broker; resolves once it says it runs. */
async function startAgent(
  root: string,
  nodeFlags: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ agent: ChildProcess; cmdline: string[] }> {
  const config = join(work, `config-${Date.now()}.json`);
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: "dev-process",
      api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, `api-${Date.now()}.sock`) },
    }),
  );
  const agent = spawn(process.execPath, [...nodeFlags, FLEETLET_BIN, "--root", root, "--config", config, "agent"], {
    stdio: ["ignore", "ignore", "pipe"],
    env,
  });
  await agentStarted(agent);
  const cmdline = readFileSync(`/proc/${agent.pid}/cmdline`, "utf8").split("\0").filter(Boolean);
  return { agent, cmdline };
}

/**
 * Stops the agent. Its exit status is not these tests' matter: the agent says
 * it runs a moment before it catches SIGTERM (agent-daemon.ts), and a SIGTERM
 * in between ends it by the signal.
 */
async function stop(agent: ChildProcess): Promise<void> {
  const exited = new Promise((r) => agent.once("exit", r));
  agent.kill("SIGTERM");
  await exited;
}

describe("the agent process", () => {
  it("runs under its Node flags, in the process it was started as", async () => {
    const root = freshRoot();
    try {
      const { agent, cmdline } = await startAgent(root);
      expect(cmdline.slice(1, 1 + AGENT_NODE_FLAGS.length)).toEqual([...AGENT_NODE_FLAGS]);
      expect(cmdline.slice(1 + AGENT_NODE_FLAGS.length)).toEqual([
        FLEETLET_BIN,
        "--root",
        root,
        "--config",
        expect.any(String),
        "agent",
      ]);
      await stop(agent);
    } finally {
      await cleanupRoot(root);
    }
  });

  it("keeps a Node flag given on its command line as given", async () => {
    const root = freshRoot();
    try {
      const { agent, cmdline } = await startAgent(root, ["--max-semi-space-size=4"]);
      expect(cmdline).toContain("--max-semi-space-size=4");
      expect(cmdline).not.toContain("--max-semi-space-size=1");
      expect(cmdline).toContain("--v8-pool-size=1");
      await stop(agent);
    } finally {
      await cleanupRoot(root);
    }
  });
});

describe("the agent process and the launcher's malloc tunables", () => {
  it("re-executes itself without them, other tunables kept, even with every Node flag given", async () => {
    const root = freshRoot();
    try {
      // As the launcher starts it. glibc rewrites the environment block that /proc/<pid>/environ shows
      // without the tunables, so the mark is what shows it re-executed (only the re-execution drops it);
      // tunablesWithoutBulk itself is held to the set by malloc-tunables.test.ts.
      const tunables = `glibc.malloc.arena_max=2:${BULK_MALLOC_TUNABLES}`;
      const env = { ...process.env, GLIBC_TUNABLES: tunables, [BULK_MALLOC_MARK]: "1" };
      const { agent, cmdline } = await startAgent(root, [...AGENT_NODE_FLAGS], env);
      const environ = readFileSync(`/proc/${agent.pid}/environ`, "utf8").split("\0");
      expect(environ.filter((e) => e.startsWith("GLIBC_TUNABLES="))).toEqual([
        "GLIBC_TUNABLES=glibc.malloc.arena_max=2",
      ]);
      expect(environ.filter((e) => e.startsWith(`${BULK_MALLOC_MARK}=`))).toEqual([]);
      expect(cmdline.filter((a) => a.startsWith("--")).slice(0, AGENT_NODE_FLAGS.length)).toEqual([
        ...AGENT_NODE_FLAGS,
      ]);
      await stop(agent);
    } finally {
      await cleanupRoot(root);
    }
  });
});

describe("the agent process under a profiler", () => {
  // node --cpu-prof samples with SIGPROF; one sent while the agent replaces
  // its image used to end the new image before it ran (26 of 30 starts at a
  // 1 us interval), as the signal's default action. At 100 us the unfixed
  // core still failed 3 runs of 3; at 1 us, on a VM where each signal traps to
  // the hypervisor, the samples alone kept an agent from starting within
  // 150 s while the rest of the suite loaded the CPU. Five starts catch the
  // fault all but surely.
  it("comes through its re-execution, every time", async () => {
    const root = freshRoot();
    const flags = ["--cpu-prof", "--cpu-prof-dir", join(work, "profiles"), "--cpu-prof-interval", "100"];
    try {
      for (let i = 0; i < 5; i++) {
        const { agent, cmdline } = await startAgent(root, flags);
        expect(cmdline).toContain("--v8-pool-size=1"); // re-executed
        await stop(agent);
      }
    } finally {
      await cleanupRoot(root);
    }
  }, 150_000);
});

describe("the native core's process operations", () => {
  const run = (script: string) =>
    spawnSync(process.execPath, ["-e", `const core = require(${JSON.stringify(NATIVE)});\n${script}`], {
      encoding: "utf8",
    });

  it("gives back a heap that garbage grew", () => {
    const r = run(`
      let keep = [];
      for (let i = 0; i < 3e6; i++) { keep.push({ i, s: "x" + i }); if (keep.length > 400000) keep = []; }
      keep = null;
      const before = process.memoryUsage().heapTotal;
      core.reclaimMemory();
      console.log(JSON.stringify({ before, after: process.memoryUsage().heapTotal }));`);
    expect(r.status, r.stderr).toBe(0);
    const { before, after } = JSON.parse(r.stdout) as { before: number; after: number };
    expect(after).toBeLessThan(before / 2);
  });

  it("replaces the process, keeping its pid and standard streams, and says why it could not", () => {
    const ok = run(
      `console.log(process.pid); core.execve("/bin/sh", ["sh", "-c", "echo $$ $WHO; echo err >&2"], ["WHO=shell"]);`,
    );
    const [nodePid, shell] = ok.stdout.trim().split("\n");
    expect(shell).toBe(`${nodePid} shell`);
    expect(ok.stderr).toBe("err\n");
    const bad = run(
      `try { core.execve("/nonexistent/node", ["node"], []); } catch (e) { console.log(e.message, e.errno); }`,
    );
    expect(bad.stdout.trim()).toBe("execve /nonexistent/node: No such file or directory 2");
  });
});

describe("a pinned image", () => {
  const rootfs = inject("busyboxRootfs");
  const root = freshRoot();

  afterAll(async () => {
    await cleanupRoot(root);
  });

  it("is applied from the store with the registry gone", async () => {
    const reg = await startRegistry({ auth: "htpasswd" });
    const config = join(work, "pinned-config.json");
    writeFileSync(
      config,
      JSON.stringify({
        deviceId: "dev-pinned",
        registries: registriesConfig(reg),
      }),
    );
    let pinned: string;
    try {
      const push = fleetctl(["--config", config, "push", rootfs, `${reg.host}/pinned/busybox:1`]);
      expect(push.status, push.stderr).toBe(0);
      pinned = push.stdout.trim().split("\n").at(-1)!;
      expect(pinned).toMatch(/@sha256:[a-f0-9]{64}$/);
      expect(fleetlet(root, ["--config", config, "pull", "--quiet", pinned]).status).toBe(0);
    } finally {
      await reg.stop();
    }
    const file = join(work, "pinned.json");
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: "pinned-1",
        generation: 1,
        services: { web: { image: pinned, command: ["/bin/sleep", "1000"], stopTimeoutMs: 200 } },
        update: { healthyWithinMs: 1000 },
      }),
    );
    const r = await runCli("fleetlet", ["--root", root, "--config", config, "apply", file]);
    expect(r.stdout, r.stderr).toMatch(/generation 1: converged/);
    expect(r.status).toBe(0);
  });
});
