/**
 * The arm64 release bundle, on this x86_64 machine: its binaries are checked
 * to be aarch64 ones, and its Node runs the CLIs and the agent under Debian's
 * qemu-user-static, against the real registry and broker. qemu-user runs
 * one aarch64 program; without a binfmt_misc handler for aarch64 the kernel
 * cannot exec the next one (the shim), so the container start is refused,
 * and the test says so.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AGENT_NODE_FLAGS } from "../../agent/system/process-memory.js";
import type { ReportedState } from "../../schemas/reported.js";
import { EM_AARCH64, ET_DYN, ET_EXEC, readElfHeader } from "../support/elf-header.js";
import { fleetctl } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { BUILD_TIMEOUT_MS, releaseBundle, unpackBundle, VERSION } from "../support/release-bundle.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const QEMU = "/usr/bin/qemu-aarch64-static";
/** Where Debian's libc6-arm64-cross keeps the aarch64 loader and libraries the bundled Node links against. */
const AARCH64_SYSROOT = "/usr/aarch64-linux-gnu";
const DEVICE = "dev-bundle-arm64";
const rootfs = inject("busyboxRootfs");
const work = mkdtempSync(join(tmpdir(), "fleetlet-release-arm64-"));
let bundle: string;
let reg: RegistryFixture;
let broker: MosquittoFixture;
let root: string;
let config: string;
let image: string;
let agent: ChildProcess | undefined;
let agentLog = "";
let operator: mqtt.MqttClient;
const reports: ReportedState[] = [];

/** The bundled Node running one of the bundle's CLIs under emulation, as bin/fleetlet would on an arm64 device. */
const emulated = (cli: "fleetlet" | "fleetctl", args: string[], nodeFlags: readonly string[] = []) => [
  "-L",
  AARCH64_SYSROOT,
  join(bundle, "node/bin/node"),
  ...nodeFlags,
  join(bundle, "lib", `${cli}.js`),
  ...args,
];

function underQemu(cli: "fleetlet" | "fleetctl", args: string[]) {
  const r = spawnSync(QEMU, emulated(cli, args), { encoding: "utf8", timeout: 300_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The aarch64 handler binfmt_misc would run aarch64 programs with, if one is registered here. */
function aarch64BinfmtHandler(): string | undefined {
  const dir = "/proc/sys/fs/binfmt_misc";
  if (!existsSync(join(dir, "status"))) return undefined;
  return readdirSync(dir).find((name) => {
    if (name === "status" || name === "register") return false;
    const entry = readFileSync(join(dir, name), "utf8");
    // The aarch64 ELF header's e_machine (0xb7) sits at offset 18 of the magic qemu's handlers register.
    return /^enabled/m.test(entry) && /^magic 7f454c460201010000000000000000000200b700/m.test(entry);
  });
}

const latest = () => reports.at(-1);
const reportWait = (timeoutMs = 120_000): WaitForOptions => ({
  timeoutMs,
  intervalMs: 200,
  context: () => `last report: ${JSON.stringify(latest())}; agent stderr: ${agentLog.slice(-2000)}`,
});

beforeAll(async () => {
  if (!existsSync(QEMU)) throw new Error(`${QEMU} is missing: apt-get install qemu-user-static (npm test does)`);
  const [tarball, registry, mosquitto] = await Promise.all([
    releaseBundle(inject("releaseDir"), "arm64"),
    startRegistry({ auth: "htpasswd" }),
    startMosquitto(),
  ]);
  [reg, broker] = [registry, mosquitto];
  mkdirSync(join(work, "unpacked"));
  bundle = await unpackBundle(tarball, join(work, "unpacked"));
  root = freshRoot();
  config = join(work, "config.json");
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: DEVICE,
      mqtt: { url: broker.url, insecure: true },
      registries: registriesConfig(reg),
      api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, "api.sock") },
    }),
  );
  // An image for the device's platform (its files are the busybox rootfs this machine has: nothing runs them here).
  image = `${reg.host}/bundle/busybox-arm64:1`;
  const push = fleetctl(["--config", config, "push", "--platform", "linux/arm64", rootfs, image]);
  if (push.status !== 0) throw new Error(`fleetctl push failed: ${push.stderr}`);
}, BUILD_TIMEOUT_MS);

afterAll(async () => {
  if (agent && agent.exitCode === null && agent.signalCode === null) agent.kill("SIGKILL");
  operator?.end(true);
  if (root) await cleanupRoot(root);
  await Promise.all([reg?.stop(), broker?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

describe("the arm64 bundle's binaries", () => {
  it("has a shim that is a static aarch64 executable: e_machine 183 and no program interpreter", () => {
    expect(readElfHeader(join(bundle, "native/fleetlet-shim"))).toEqual({
      elf64le: true,
      type: ET_EXEC,
      machine: EM_AARCH64,
      interpreter: false,
    });
  });

  it("has an aarch64 addon and an aarch64 Node", () => {
    expect(readElfHeader(join(bundle, "native/fleetlet_native.node"))).toMatchObject({
      type: ET_DYN,
      machine: EM_AARCH64,
    });
    expect(readElfHeader(join(bundle, "node/bin/node"))).toMatchObject({ machine: EM_AARCH64, interpreter: true });
    expect(readFileSync(join(bundle, "RELEASE"), "utf8")).toBe(
      `version=${VERSION}\narch=arm64\nnode=${process.versions.node}\n`,
    );
  });
});

describe("the arm64 bundle under qemu-aarch64-static", () => {
  it("prints fleetlet's version", () => {
    expect(underQemu("fleetlet", ["--version"])).toEqual({ status: 0, stdout: `fleetlet ${VERSION}\n`, stderr: "" });
  });

  it("makes a signing key with fleetctl keygen", () => {
    const key = join(work, "ops.key");
    const r = underQemu("fleetctl", ["keygen", key]);
    expect(r.status, r.stderr).toBe(0);
    const pub = readFileSync(`${key}.pub`, "utf8").trim();
    expect(Buffer.from(pub, "base64")).toHaveLength(32);
    expect(r.stdout.trim()).toBe(pub);
    expect(statSync(key).mode & 0o777).toBe(0o600);
  });

  it("pulls and unpacks an image from the test registry, through the aarch64 addon", () => {
    const r = underQemu("fleetlet", ["--root", root, "--config", config, "pull", image]);
    expect(r.status, r.stderr).toBe(0);
    const images = JSON.parse(underQemu("fleetlet", ["--root", root, "images", "--json"]).stdout) as {
      ref: string;
      platform: string;
    }[];
    expect(images).toEqual([expect.objectContaining({ ref: image, platform: "linux/arm64" })]);
    const layers = readdirSync(join(root, "layers"));
    expect(layers).toHaveLength(1);
    expect(statSync(join(root, "layers", layers[0]!, "bin/busybox")).isFile()).toBe(true);
  });

  it("runs an agent that connects, takes a document and reports it; starting the container is refused: with no binfmt_misc handler for aarch64 the kernel cannot exec the aarch64 shim", async () => {
    expect(aarch64BinfmtHandler(), "this test expects no aarch64 binfmt_misc handler").toBeUndefined();
    // execve(2) itself, as the addon's posix_spawn calls it (Node's spawn would fall back to /bin/sh on ENOEXEC).
    const exec = spawnSync(
      "python3",
      ["-c", "import os,sys; os.execv(sys.argv[1], [sys.argv[1]])", join(bundle, "native/fleetlet-shim")],
      {
        encoding: "utf8",
      },
    );
    expect(exec.stderr).toContain("OSError: [Errno 8] Exec format error");
    operator = mqtt.connect(broker.url, { clientId: "operator-release-arm64" });
    await new Promise((resolve) => operator.once("connect", resolve));
    await operator.subscribeAsync(`fleet/devices/${DEVICE}/reported`, { qos: 1 });
    operator.on("message", (_topic, payload) => {
      if (payload.length) reports.push(JSON.parse(payload.toString()));
    });
    // With its Node flags given, the agent does not re-execute itself: under qemu-user that exec would fail as well.
    agent = spawn(
      QEMU,
      emulated("fleetlet", ["--root", root, "--config", config, "agent", "--heartbeat", "2"], AGENT_NODE_FLAGS),
      {
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    agent.stderr!.on("data", (d) => {
      agentLog += d;
    });
    await waitFor("a first report", () => latest(), reportWait());
    operator.publish(
      `fleet/devices/${DEVICE}/desired`,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment: "arm64-1",
        generation: 1,
        services: { web: { image, command: ["/bin/sleep", "1000"], restart: "never" } },
        update: { healthyWithinMs: 5000, rollback: false },
      }),
      { qos: 1, retain: true },
    );
    const r = await waitFor(
      "generation 1 reported with an error",
      () => (latest()?.generation === 1 && latest()?.lastError ? latest() : undefined),
      reportWait(),
    );
    expect(r.agent.version).toBe(VERSION);
    expect(r.deployment).toBe("arm64-1");
    expect(r.phase).toBe("failed");
    expect(r.services.web).toMatchObject({ image, state: "stopped", restarts: 0 });
    // qemu-user runs the addon's posix_spawn as a fork, so the exec's ENOEXEC reaches the addon only as an exit.
    expect(r.lastError).toEqual({
      code: "E_RUNTIME",
      message: expect.stringMatching(/^container web\.[0-9a-f]+: the shim exited without saying why$/),
    });
  });
});
