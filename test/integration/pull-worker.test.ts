/**
 * The daemon's pulls run in a pull worker (agent/cli/pull-process.ts): a
 * forked `fleetlet` that pulls through the same entry point as `fleetlet
 * pull` and exits. Driven here as the daemon drives it, against the real TLS
 * registry: the image, the events, the caller's lease, errors with their
 * code, an abort mid-pull, and a worker whose agent died.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type PullRequest, pullInWorker, releaseSpareWorker } from "../../agent/cli/pull-process.js";
import { loadDeviceConfig } from "../../agent/config/device-config.js";
import { FleetError } from "../../agent/errors.js";
import type { PullEvent } from "../../agent/registry/pull.js";
import { imageContent, LocalStore } from "../../agent/store/local-store.js";
import { loadNative } from "../../agent/system/native.js";
import { workerNodeFlags } from "../../agent/system/process-memory.js";
import type { DeviceConfig } from "../../schemas/config.js";
import { FLEETLET_BIN, fleetctl, fleetlet } from "../support/fleetlet-cli.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
let reg: RegistryFixture;
let root: string;
let configPath: string;
let config: DeviceConfig;
let store: LocalStore;
let small: string;
let big: string;

/** Whether a process is a live pull worker (a zombie's cmdline is empty). */
function isWorker(pid: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes("__pull-worker");
  } catch {
    return false; // the process ended while we looked: not a worker any more
  }
}

/** The pull workers `parent` forked (other test files' agents run workers of their own meanwhile). */
function workers(parent = process.pid): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return Number(/^PPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${d}/status`, "utf8"))?.[1]) === parent;
      } catch {
        return false; // the process ended while we looked
      }
    })
    .filter(isWorker)
    .map(Number);
}

const request = (ref: string, extra: Partial<PullRequest> = {}): PullRequest => ({
  root,
  config,
  ref,
  unpack: true,
  ...extra,
});

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  root = freshRoot();
  const work = mkdtempSync(join(tmpdir(), "fleetlet-pull-worker-"));
  configPath = join(work, "config.json");
  writeFileSync(configPath, JSON.stringify({ registries: registriesConfig(reg) }));
  config = loadDeviceConfig(configPath);
  small = `${reg.host}/worker/busybox:1`;
  expect(fleetctl(["--config", configPath, "push", rootfs, small]).status).toBe(0);
  const payload = join(work, "big");
  mkdirSync(payload);
  writeFileSync(join(payload, "noise"), randomBytes(4 << 20)); // incompressible: 4 MiB on the wire
  big = `${reg.host}/worker/big:1`;
  expect(fleetctl(["--config", configPath, "push", payload, big]).status).toBe(0);
  store = await LocalStore.open(root, loadNative().core);
});

afterAll(async () => {
  await cleanupRoot(root);
  await reg.stop();
});

describe("the pull worker", () => {
  it("pulls into the store, relays the pull's events and names the content in the caller's lease", async () => {
    const lease = await store.leases.take("apply test");
    const events: PullEvent[] = [];
    const image = await pullInWorker(request(small, { leaseId: lease.id }), {
      script: FLEETLET_BIN,
      onEvent: (e) => events.push(e),
    });
    // Asked to wait for no other pull, it exits once it has handed the image back.
    await waitFor("the worker to exit", () => workers().length === 0, { timeoutMs: 10_000 });
    expect(image.ref).toBe(small);
    expect(events.map((e) => e.type)).toContain("resolved");
    expect(events.map((e) => e.type)).toContain("unpacked");
    expect(events.at(-1)).toMatchObject({ type: "done", ref: small, digest: image.digest });
    await store.db.refresh();
    expect(store.isWhole(image)).toBe(true);
    // The caller's lease holds the image; the worker's own, if it took any, ended with it.
    const content = imageContent(image);
    expect(Object.keys(store.db.data.leases)).toEqual([lease.id]);
    expect(store.db.data.leases[lease.id]!.blobs).toEqual(expect.arrayContaining([...(content.blobs ?? [])]));
    await lease.release();
  });

  it("rejects with the FleetError code and message that `fleetlet pull` prints for the same image", async () => {
    const ref = `${reg.host}/worker/none:1`;
    const cli = fleetlet(root, ["--config", configPath, "pull", "--quiet", ref]);
    const printed = /\[(E_[A-Z_]+)\]/.exec(cli.stderr)?.[1];
    expect(printed, cli.stderr).toBeDefined();
    const err = await pullInWorker(request(ref), { script: FLEETLET_BIN }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FleetError);
    expect((err as FleetError).code).toBe(printed);
    expect(cli.stderr).toContain((err as FleetError).message);
    await waitFor("the worker to exit", () => workers().length === 0, { timeoutMs: 10_000 });
  });

  it("with an idle time, serves the next pull in the same process, then exits when none comes", async () => {
    const opts = { script: FLEETLET_BIN, idleMs: 3_000 };
    const first = await pullInWorker(request(small), opts);
    const [pid] = workers();
    expect(pid).toBeDefined(); // waiting for the next pull
    const again = await pullInWorker(request(small), opts); // the tag resolved again, as the next apply does
    expect(again.digest).toBe(first.digest);
    expect(workers()).toEqual([pid]); // the same worker: no new process, its connections and token kept
    await waitFor("the idle worker to exit", () => !isWorker(String(pid)), { timeoutMs: 20_000 });
    expect(workers()).toEqual([]);
  });

  it("gives the pull to a new worker when the waiting one ended just as it was asked", async () => {
    const opts = { script: FLEETLET_BIN, idleMs: 30_000 };
    await pullInWorker(request(small), opts);
    const [waiting] = workers();
    expect(waiting).toBeDefined();
    // Killed in the same tick as it is asked: its channel still looks open, as when its idle time runs out.
    process.kill(waiting!, "SIGKILL");
    const image = await pullInWorker(request(small), opts);
    expect(image.ref).toBe(small);
    const [next] = workers();
    expect(next).toBeDefined();
    expect(next).not.toBe(waiting);
    releaseSpareWorker();
    await waitFor("the released worker to exit", () => workers().length === 0, { timeoutMs: 10_000 });
  });

  it("keeps no caller alive while its worker waits for another pull", () => {
    const module = fileURLToPath(new URL("../../dist/agent/cli/pull-process.js", import.meta.url));
    const script = join(mkdtempSync(join(tmpdir(), "fleetlet-pull-worker-caller-")), "caller.mjs");
    writeFileSync(
      script,
      `import { pullInWorker } from ${JSON.stringify(module)};
      await pullInWorker(JSON.parse(process.argv[2]), { script: ${JSON.stringify(FLEETLET_BIN)}, idleMs: 120000 });
      console.log("pulled");`,
    );
    // Checked to fail before: the waiting worker's handle held the caller until the worker's idle time ran out.
    const r = spawnSync(process.execPath, [script, JSON.stringify(request(small))], {
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(r.signal, r.stderr).toBeNull();
    expect(r.stdout, r.stderr).toBe("pulled\n");
  });

  it("says E_PULL_WORKER for a worker that could not start, so the agent can pull itself", async () => {
    const err = await pullInWorker(request(small), { script: "/nonexistent/fleetlet.js" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FleetError);
    expect((err as FleetError).code).toBe("E_PULL_WORKER");
    expect((err as FleetError).message).toContain("before it started pulling");
  });

  it("is killed by an abort mid-pull: rejects with the abort's reason and keeps what it fetched for the next pull", async () => {
    const lease = await store.leases.take("apply cancelled");
    const abort = new AbortController();
    const reason = new FleetError("E_ABORTED", "a newer document replaced this one");
    let done = 0; // bytes of the layer the first worker had written when it was killed, at least

    const pulling = pullInWorker(request(big, { leaseId: lease.id, maxRate: 256 * 1024 }), {
      script: FLEETLET_BIN,
      execArgv: workerNodeFlags(["--max-semi-space-size=1", "--lite-mode", "--bytecode-old-age=2"]),
      signal: abort.signal,
      onEvent: (e) => {
        if (e.type === "progress") done = Math.max(done, e.done);
      },
    }).catch((e: unknown) => e);
    await waitFor("the worker's first 256 KiB", () => done >= 256 * 1024, { timeoutMs: 60_000 });
    expect(workers()).toHaveLength(1);
    // It runs under the daemon's flags but those a worker drops.
    const cmdline = readFileSync(`/proc/${workers()[0]}/cmdline`, "utf8").split("\0");
    expect(cmdline).toContain("--max-semi-space-size=1");
    expect(cmdline).not.toContain("--lite-mode");
    expect(cmdline).not.toContain("--bytecode-old-age=2");
    // And without malloc in huge pages, as the daemon: no region advised for them (the "hg" flag). With
    // them, the agent bench's 20 cached pulls took 40% longer (system/process-memory.ts).
    expect(readFileSync(`/proc/${workers()[0]}/smaps`, "utf8")).not.toMatch(/ hg( |$)/m);
    abort.abort(reason);
    expect(await pulling).toBe(reason);
    // What it had written stays in its ingest, for the next pull to resume from.
    const partials = readdirSync(join(root, "ingest")).filter((f) => f.endsWith(".partial"));
    expect(partials).toHaveLength(1);
    expect(statSync(join(root, "ingest", partials[0]!)).size).toBeGreaterThanOrEqual(done);
    expect(workers()).toEqual([]);
    await store.db.refresh();
    expect(Object.keys(store.db.data.leases)).toEqual([lease.id]);
    const image = await pullInWorker(request(big, { leaseId: lease.id }), { script: FLEETLET_BIN });
    expect(image.ref).toBe(big);
    expect(readdirSync(join(root, "ingest")).filter((f) => f.endsWith(".partial"))).toEqual([]);
    await lease.release();
  });

  it("stops its pull and exits when the agent that forked it dies", async () => {
    const otherRoot = freshRoot();
    try {
      // The daemon's side, from dist/ as the daemon runs it: a process that asks a worker for a slow pull.
      const module = fileURLToPath(new URL("../../dist/agent/cli/pull-process.js", import.meta.url));
      const script = join(mkdtempSync(join(tmpdir(), "fleetlet-pull-worker-agent-")), "agent.mjs");
      writeFileSync(
        script,
        `import { pullInWorker } from ${JSON.stringify(module)};
        let said = false;
        await pullInWorker(JSON.parse(process.argv[2]), {
          script: ${JSON.stringify(FLEETLET_BIN)},
          onEvent: (e) => { if (e.type === "progress" && !said) { said = true; console.log("progress"); } },
        });`,
      );
      const req = { ...request(big), root: otherRoot, maxRate: 64 * 1024 }; // a minute for the 4 MiB
      const agent = spawn(process.execPath, [script, JSON.stringify(req)], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      agent.stdout!.on("data", (d) => {
        out += d;
      });
      await waitFor("the worker's first progress", () => out.includes("progress"), { timeoutMs: 30_000 });
      const forked = workers(agent.pid);
      expect(forked).toHaveLength(1);
      agent.kill("SIGKILL");
      await waitFor("the orphaned worker to exit", () => !isWorker(String(forked[0])), { timeoutMs: 30_000 });
      // It stopped, not finished: the image was never recorded, and no lease of the worker's is left.
      const other = await LocalStore.open(otherRoot, loadNative().core);
      expect(other.images.find(big)).toBeUndefined();
      expect(Object.keys(other.db.data.leases)).toEqual([]);
    } finally {
      await cleanupRoot(otherRoot);
    }
  });
});
