/** The deploy files: the unit as systemd reads it, the example config against the schema, and install.sh for real. */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deviceConfig } from "../../schemas/config.js";
import { FLEETLET_BIN } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const UNIT = "deploy/fleetlet.service";
const INSTALL = "deploy/install.sh";
let work: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-deploy-"));
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

function sh(cmd: string, args: string[], timeout = 120_000) {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout });
  if (r.error) throw new Error(`${cmd} ${args.join(" ")} could not run: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * systemd-analyze verify exits 0 even for unknown keys and bad values (it
 * only warns), so the unit passes when it exits 0 and no line names it.
 */
function verifyUnit(unitText: string, dir: string): { status: number | null; complaints: string[] } {
  const analyze = "/usr/bin/systemd-analyze";
  if (!existsSync(analyze))
    throw new Error(`${analyze} is missing, so the unit cannot be verified: apt-get install systemd`);
  mkdirSync(dir, { recursive: true });
  // verify checks that ExecStart's binary exists: point it at the node running this test when /usr/bin/node is absent.
  const path = join(dir, "fleetlet.service");
  writeFileSync(path, existsSync("/usr/bin/node") ? unitText : unitText.replaceAll("/usr/bin/node", process.execPath));
  const r = sh(analyze, ["verify", path]);
  const complaints = `${r.stdout}\n${r.stderr}`
    .split("\n")
    .filter((l) => l.includes("fleetlet.service") || l.includes(dir));
  return { status: r.status, complaints };
}

/** Key=value pairs of a unit file, and the line before each key (its comment). */
function parseUnit(text: string): Map<string, { value: string; before: string }> {
  const lines = text.split("\n");
  const keys = new Map<string, { value: string; before: string }>();
  lines.forEach((line, i) => {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m) keys.set(m[1]!, { value: m[2]!, before: lines[i - 1] ?? "" });
  });
  return keys;
}

describe("the systemd unit", () => {
  const text = readFileSync(UNIT, "utf8");

  it("passes systemd-analyze verify without a warning about it", () => {
    expect(verifyUnit(text, join(work, "unit"))).toEqual({ status: 0, complaints: [] });
  });

  it("would have been caught by verify with a misspelled key (the check above can fail)", () => {
    const { complaints } = verifyUnit(text.replace("Delegate=yes", "Delegat=yes"), join(work, "bad-unit"));
    expect(complaints.join("\n")).toMatch(/Unknown key 'Delegat'/);
  });

  it("runs the installed agent and lets containers outlive it, as root and with setuid binaries", () => {
    const keys = parseUnit(text);
    const want = {
      ExecStart: "/usr/bin/node /opt/fleetlet/bin/fleetlet.js agent --config /etc/fleetlet/config.json",
      Type: "notify",
      NotifyAccess: "main",
      KillMode: "process",
      Delegate: "yes",
      Restart: "always",
      RestartSec: "2",
      ProtectSystem: "full",
      ProtectHome: "yes",
      PrivateTmp: "yes",
      StateDirectory: "fleetlet",
      StateDirectoryMode: "0700",
      RuntimeDirectory: "fleetlet",
      RuntimeDirectoryPreserve: "yes",
      LimitNOFILE: "1048576",
      OOMScoreAdjust: "-900",
      TasksMax: "infinity",
    };
    expect(Object.fromEntries(Object.keys(want).map((k) => [k, keys.get(k)?.value]))).toEqual(want);
    expect(keys.has("NoNewPrivileges")).toBe(false);
    expect(keys.has("User")).toBe(false);
    for (const k of [
      "KillMode",
      "Delegate",
      "StateDirectoryMode",
      "RuntimeDirectoryPreserve",
      "ProtectSystem",
      "OOMScoreAdjust",
      "TasksMax",
      "LimitNOFILE",
      "Type",
    ]) {
      expect(keys.get(k)?.before, `the comment before ${k}`).toMatch(/^# /);
    }
  });
});

describe("the unit's ExecStart", () => {
  it("starts the agent with exactly its arguments, which then exits 0 on SIGTERM", async () => {
    const [node, script, ...args] = parseUnit(readFileSync(UNIT, "utf8")).get("ExecStart")!.value.split(/\s+/);
    expect([node, script]).toEqual(["/usr/bin/node", "/opt/fleetlet/bin/fleetlet.js"]);
    // The installed paths become this checkout's; the arguments stay as the unit gives them.
    const config = join(work, "exec-start-config.json");
    writeFileSync(
      config,
      JSON.stringify({
        deviceId: "dev-unit",
        api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, "exec-start-api.sock") },
      }),
    );
    expect(args).toContain("/etc/fleetlet/config.json");
    const argv = args.map((a) => (a === "/etc/fleetlet/config.json" ? config : a));
    const root = freshRoot();
    const { NOTIFY_SOCKET: _n, FLEETLET_CONFIG: _c, ...env } = process.env;
    const agent = spawn(process.execPath, [FLEETLET_BIN, ...argv], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...env, FLEETLET_ROOT: root },
    });
    try {
      let stderr = "";
      const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
        agent.once("exit", (code, signal) => resolve([code, signal])),
      );
      const started = await new Promise<boolean>((resolve) => {
        agent.stderr!.on("data", (d) => {
          stderr += d;
          if (/^fleetlet agent /m.test(stderr)) resolve(true);
        });
        void exited.then(() => resolve(false));
      });
      expect(started, stderr).toBe(true);
      expect(stderr).toMatch(new RegExp(`^fleetlet agent .*: device dev-unit, state in ${root}`, "m"));
      agent.kill("SIGTERM");
      expect(await exited, stderr).toEqual([0, null]);
    } finally {
      if (agent.exitCode === null && agent.signalCode === null) agent.kill("SIGKILL");
      await cleanupRoot(root);
    }
  });
});

describe("readiness", () => {
  it("tells systemd it is ready, and later that it is stopping, through NOTIFY_SOCKET", async () => {
    const root = freshRoot();
    const sock = join(work, "notify.sock");
    const config = join(work, "notify-config.json");
    writeFileSync(
      config,
      JSON.stringify({
        deviceId: "dev-notify",
        api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, "notify-api.sock") },
      }),
    );
    // Node has no unix datagram sockets; python3 plays systemd's side.
    const script =
      "import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint('bound',flush=True)\nwhile True:\n m=s.recv(4096).decode()\n print(repr(m),flush=True)\n if m.startswith('STOPPING'): break\n";
    const systemd = spawn("python3", ["-c", script, sock], { stdio: ["ignore", "pipe", "inherit"] });
    let heard = "";
    systemd.stdout!.on("data", (d) => {
      heard += d;
    });
    const notifyWait = { timeoutMs: 20_000, intervalMs: 100, context: () => `heard so far: ${JSON.stringify(heard)}` };
    try {
      await waitFor("the notify socket bound", () => /bound/.test(heard), notifyWait);
      const agent = spawn(process.execPath, [FLEETLET_BIN, "--root", root, "--config", config, "agent"], {
        stdio: "ignore",
        env: { ...process.env, NOTIFY_SOCKET: sock },
      });
      await waitFor("READY=1 from the agent", () => /READY=1/.test(heard), notifyWait);
      expect(heard).toMatch(/'READY=1\\nSTATUS=device dev-notify: 0 service\(s\) adopted, no broker'/);
      expect(heard).not.toMatch(/STOPPING/);
      agent.kill("SIGTERM");
      await waitFor("STOPPING=1 from the agent", () => /STOPPING=1/.test(heard), notifyWait);
      expect(heard).toMatch(/'STOPPING=1'/);
      await new Promise((r) => (agent.exitCode === null ? agent.once("exit", r) : r(null)));
    } finally {
      systemd.kill();
      await cleanupRoot(root);
    }
  });
});

describe("the example config", () => {
  const example = JSON.parse(readFileSync("deploy/config.example.json", "utf8"));

  it("validates against deviceConfig", () => {
    const parsed = deviceConfig.safeParse(example);
    expect(parsed.error?.issues ?? []).toEqual([]);
  });

  it("shows every field the schema has and none it would silently drop", () => {
    const parsed = deviceConfig.parse(example) as Record<string, unknown>;
    expect(Object.keys(example).sort()).toEqual(Object.keys(deviceConfig.shape).sort());
    for (const section of ["mqtt", "api", "pull"] as const) {
      expect(Object.keys(example[section]).sort(), section).toEqual(Object.keys(parsed[section] as object).sort());
    }
    expect(Object.keys(example.mqtt).sort()).toEqual(["ca", "cert", "key", "password", "prefix", "url", "username"]);
    for (const [host, reg] of Object.entries(example.registries)) {
      expect(Object.keys(reg as object).sort(), host).toEqual(["ca", "insecure", "password", "username"]);
    }
  });
});

describe("install.sh", () => {
  it("is valid POSIX sh", () => {
    const r = sh("/bin/sh", ["-n", INSTALL]);
    expect([r.status, r.stderr]).toEqual([0, ""]);
  });

  it("reports every step on --dry-run and changes nothing, not even /etc", () => {
    const prefix = join(work, "dry", "opt", "fleetlet");
    const watched = ["/etc/fleetlet", "/etc/fleetlet/config.json", "/etc/systemd/system/fleetlet.service"];
    const before = watched.map((p) => (existsSync(p) ? statSync(p).mtimeMs : null));
    const r = sh(INSTALL, ["--dry-run", "--prefix", prefix]);
    expect(r.status, r.stderr).toBe(0);
    for (const step of [
      `would run: cp -R bin node_modules package.json package-lock.json README.md ${prefix}.new/`,
      "npm prune --omit=dev",
      `would run: mv ${prefix}.new ${prefix}`,
      existsSync("/etc/fleetlet/config.json")
        ? "keeping the existing /etc/fleetlet/config.json"
        : "would write /etc/fleetlet/config.json (mode 0600)",
      "/etc/systemd/system/fleetlet.service",
      "systemctl daemon-reload && systemctl enable --now fleetlet",
      "dry run done: nothing was changed",
    ]) {
      expect(r.stdout).toContain(step);
    }
    expect(existsSync(join(work, "dry"))).toBe(false);
    expect(watched.map((p) => (existsSync(p) ? statSync(p).mtimeMs : null))).toEqual(before);
  });

  it("installs a pruned, runnable tree, a 0600 config with its own token, and keeps that config on a second run", () => {
    for (const built of [
      "dist/agent/cli/fleetlet.js",
      "native/build/Release/fleetlet_native.node",
      "native/build/Release/fleetlet-shim",
    ]) {
      // Without a build install.sh would run `npm ci`, replacing the node_modules this test runs from.
      if (!existsSync(built)) throw new Error(`${built} is missing: run \`npm run build\` before this test`);
    }
    const root = join(work, "real");
    const [prefix, etc, units] = [join(root, "opt/fleetlet"), join(root, "etc/fleetlet"), join(root, "units")];
    const args = ["--prefix", prefix, "--config-dir", etc, "--unit-dir", units];
    const first = sh(INSTALL, args);
    expect(first.status, first.stderr).toBe(0);
    const config = JSON.parse(readFileSync(join(etc, "config.json"), "utf8"));
    expect(statSync(join(etc, "config.json")).mode & 0o777).toBe(0o600);
    expect(config.api.token).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(deviceConfig.safeParse(config).success).toBe(true);
    expect(existsSync(join(prefix, "node_modules/got"))).toBe(true);
    expect(["typescript", "vitest", "@biomejs"].filter((dev) => existsSync(join(prefix, "node_modules", dev)))).toEqual(
      [],
    );
    const unit = readFileSync(join(units, "fleetlet.service"), "utf8");
    expect(unit).toContain(`ExecStart=/usr/bin/node ${prefix}/bin/fleetlet.js agent --config ${etc}/config.json`);
    expect(verifyUnit(unit, join(work, "installed-unit"))).toEqual({ status: 0, complaints: [] });
    // `ps` loads the native addon, which must be found inside the installed tree.
    const ps = sh("/usr/bin/node", [join(prefix, "bin/fleetlet.js"), "--root", join(root, "state"), "ps"]);
    expect([ps.status, ps.stderr]).toEqual([0, ""]);

    const second = sh(INSTALL, args);
    expect(second.status, second.stderr).toBe(0);
    expect(second.stdout).toContain(`keeping the existing ${etc}/config.json`);
    expect(second.stdout).toContain("fleetlet.service is up to date");
    expect(JSON.parse(readFileSync(join(etc, "config.json"), "utf8")).api.token).toBe(config.api.token);
    expect(["opt/fleetlet.new", "opt/fleetlet.old"].filter((p) => existsSync(join(root, p)))).toEqual([]);
  }, 180_000);
});
