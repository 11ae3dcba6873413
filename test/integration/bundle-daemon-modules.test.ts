/**
 * What the release bundle's daemon keeps resident: `fleetlet agent` from the
 * bundled lib/, on a plaintext broker, applies a document and then idles.
 * Node's modules it has no use for must not be loaded by then: each one
 * named here was loaded once, by a global read in passing (`performance`,
 * `navigator`) or by a transport the connection does not use, and cost
 * resident memory for as long as the device ran (README, "Memory").
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { connectAsync, type MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { agentStarted } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { REPO } from "../support/release-bundle.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const DEVICE = "dev-bundle-modules";
/** Each with the reason it has no place in an idle daemon on a plaintext broker. */
const NOT_LOADED: Record<string, string> = {
  "internal/perf/performance": "the `performance` global (a clock is agent/clock.ts)",
  "internal/perf/usertiming": "the `performance` global",
  "internal/navigator": "the `navigator` global (mqtt.js's browser check)",
  tls: "a plaintext broker and no pull",
  zlib: "no WebSocket transport and no pull",
  "internal/deps/undici/undici": "fetch and node:http's WebSocket getter",
  "internal/fs/promises": "db.json and its lock take node:fs's callbacks (readline and REPL history come with it)",
  "internal/readline/interface": "no terminal: node:fs/promises would bring it",
  http: "nobody has asked the status endpoint yet (agent/api/lazy-http.ts)",
  _http_server: "nobody has asked the status endpoint yet",
};

const work = mkdtempSync(join(tmpdir(), "fleetlet-bundle-daemon-"));
const root = freshRoot();
let broker: MosquittoFixture;
let operator: MqttClient | undefined;
let agent: ChildProcess | undefined;

beforeAll(async () => {
  const r = spawnSync(process.execPath, [join(REPO, "deploy/js-bundle.ts"), join(work, "lib")], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`deploy/js-bundle.ts failed: ${r.stderr || r.error}`);
  const { version } = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string };
  writeFileSync(
    join(work, "package.json"),
    JSON.stringify({ name: "fleetlet", version, private: true, type: "module" }),
  );
  broker = await startMosquitto();
}, 120_000);
afterAll(async () => {
  await operator?.endAsync();
  if (agent && agent.exitCode === null) {
    agent.kill("SIGTERM");
    await new Promise((r) => agent!.once("exit", r));
  }
  await broker?.stop();
  await cleanupRoot(root);
  rmSync(work, { recursive: true, force: true });
});

/** The Node modules the agent has loaded, as its preload writes them on SIGUSR2. */
async function moduleList(agent: ChildProcess, listFile: string): Promise<Set<string>> {
  rmSync(listFile, { force: true });
  agent.kill("SIGUSR2");
  await waitFor("the daemon's module list", () => existsSync(listFile), { timeoutMs: 10_000 });
  return new Set(
    readFileSync(listFile, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("NativeModule "))
      .map((l) => l.slice("NativeModule ".length)),
  );
}

describe("the bundled daemon, idle after an apply", () => {
  it("has loaded none of the Node modules it does not use, node:http only once the endpoint is asked", async () => {
    const port = await freePort();
    const config = join(work, "config.json");
    writeFileSync(
      config,
      JSON.stringify({
        deviceId: DEVICE,
        mqtt: { url: broker.url, insecure: true },
        api: { listen: `127.0.0.1:${port}`, socket: join(work, "api.sock") },
      }),
    );
    // Loaded first: writes the process's module list when asked, by a signal.
    const listFile = join(work, "modules.txt");
    const preload = join(work, "list-modules.mjs");
    writeFileSync(
      preload,
      // Written whole, then renamed: the test reads it once it exists. node:fs
      // as the bundle takes it: an ES import would load fs/promises, readline
      // and fs streams through node:fs's getters, into the list it writes.
      `const { renameSync, writeFileSync } = process.getBuiltinModule("node:fs");\nprocess.on("SIGUSR2", () => { writeFileSync(${JSON.stringify(`${listFile}.tmp`)}, process.moduleLoadList.join("\\n")); renameSync(${JSON.stringify(`${listFile}.tmp`)}, ${JSON.stringify(listFile)}); });\n`,
    );
    agent = spawn(
      process.execPath,
      [
        `--import=${pathToFileURL(preload)}`,
        join(work, "lib/fleetlet.js"),
        "--root",
        root,
        "--config",
        config,
        "agent",
      ],
      {
        stdio: ["ignore", "ignore", "pipe"],
        env: { ...process.env, FLEETLET_NATIVE_DIR: join(REPO, "native/build/Release") },
      },
    );
    await agentStarted(agent);

    operator = await connectAsync(broker.url, { clientId: "bundle-modules-operator" });
    let reported: Record<string, unknown> | undefined;
    operator.on("message", (_t, payload) => {
      if (payload.length) reported = JSON.parse(payload.toString());
    });
    await operator.subscribeAsync(`fleet/devices/${DEVICE}/reported`, { qos: 1 });
    const doc = { apiVersion: "fleetlet/v1", deployment: "modules-1", generation: 1, services: {} };
    await operator.publishAsync(`fleet/devices/${DEVICE}/desired`, JSON.stringify(doc), { qos: 1, retain: true });
    await waitFor(
      "the document reported converged",
      () => reported?.generation === 1 && reported.phase === "converged",
      {
        timeoutMs: 30_000,
        context: () => JSON.stringify(reported),
      },
    );

    const loaded = await moduleList(agent, listFile);
    // The list is the daemon's: it holds what an MQTT client and the endpoint's listeners need.
    expect(loaded).toContain("net");
    const unexpected = Object.entries(NOT_LOADED)
      .filter(([m]) => loaded.has(m))
      .map(([m, why]) => `${m} (${why})`);
    expect(unexpected).toEqual([]);

    // The first request makes the endpoint's HTTP server: it answers at once.
    const res = await fetch(`http://127.0.0.1:${port}/v1/status`);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { deviceId: string }).deviceId).toBe(DEVICE);
    expect(await moduleList(agent, listFile)).toContain("_http_server");
  }, 90_000);
});
