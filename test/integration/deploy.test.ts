/**
 * The deploy files: the unit as systemd reads it, the example config against
 * the schema, and install.sh for real, from an x64 release bundle that
 * `npm run dist` built: what it checks, where it puts each file, upgrades
 * side by side, and what --uninstall and --purge take away.
 */
import { spawn, spawnSync } from "node:child_process";
import {
  appendFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { deviceConfig } from "../../schemas/config.js";
import { EM_X86_64, ET_EXEC, readElfHeader } from "../support/elf-header.js";
import { FLEETLET_BIN } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import {
  BUILD_TIMEOUT_MS,
  bundleName,
  deviceToolsDir,
  filesUnder,
  manifestOf,
  releaseBundle,
  unpackBundle,
  VERSION,
} from "../support/release-bundle.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const UNIT = "deploy/fleetlet.service";
const EXEC_START = "/opt/fleetlet/current/bin/fleetlet agent --config /etc/fleetlet/config.json";
const rootfs = inject("busyboxRootfs");
const work = mkdtempSync(join(tmpdir(), "fleetlet-deploy-"));

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

function sh(cmd: string, args: string[], opts: { timeout?: number; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: opts.timeout ?? 120_000, env: opts.env ?? process.env });
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
  // verify checks that ExecStart's program exists: outside an install, point it at one that does.
  const program = /^ExecStart=(\S+)/m.exec(unitText)?.[1];
  const path = join(dir, "fleetlet.service");
  writeFileSync(
    path,
    program && !existsSync(program) ? unitText.replace(`ExecStart=${program}`, "ExecStart=/bin/true") : unitText,
  );
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

  it("runs the current version's launcher and lets containers outlive it, as root and with setuid binaries", () => {
    const keys = parseUnit(text);
    const want = {
      ExecStart: EXEC_START,
      WorkingDirectory: "/opt/fleetlet/current",
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
      TasksMax: "512",
    };
    expect(Object.fromEntries(Object.keys(want).map((k) => [k, keys.get(k)?.value]))).toEqual(want);
    expect(keys.has("NoNewPrivileges")).toBe(false);
    expect(keys.has("User")).toBe(false);
    expect(text).not.toContain("/usr/bin/node");
    for (const k of [
      "ExecStart",
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
    for (const section of ["mqtt", "api", "pull", "policy", "agentUpdate"] as const) {
      expect(Object.keys(example[section]).sort(), section).toEqual(Object.keys(parsed[section] as object).sort());
    }
    expect(Object.keys(example.mqtt).sort()).toEqual([
      "ca",
      "cert",
      "insecure",
      "keepaliveSec",
      "key",
      "password",
      "prefix",
      "url",
      "username",
    ]);
    for (const limits of ["defaults", "max"] as const)
      expect(Object.keys(example.policy[limits]).sort(), `policy.${limits}`).toEqual(["memory", "pids"]);
    for (const [host, reg] of Object.entries(example.registries)) {
      expect(Object.keys(reg as object).sort(), host).toEqual(["ca", "insecure", "password", "username"]);
    }
  });
});

describe("install.sh from the x64 release bundle", () => {
  let tarball: string;
  let bundle: string;
  let tools: string;
  /** A device: no node, npm or compiler on PATH. */
  let device: NodeJS.ProcessEnv;
  const dirs = (name: string) => {
    const root = join(work, name);
    return { root, prefix: join(root, "opt/fleetlet"), etc: join(root, "etc/fleetlet"), units: join(root, "units") };
  };
  const installArgs = (d: ReturnType<typeof dirs>) => [
    "--prefix",
    d.prefix,
    "--config-dir",
    d.etc,
    "--unit-dir",
    d.units,
  ];
  const install = (from: string, args: string[]) => sh(join(from, "install.sh"), args, { env: device });

  beforeAll(async () => {
    tarball = await releaseBundle(inject("releaseDir"), "x64");
    mkdirSync(join(work, "unpacked"));
    bundle = await unpackBundle(tarball, join(work, "unpacked"));
    tools = deviceToolsDir(join(work, "device-bin"));
    device = { PATH: tools };
  }, BUILD_TIMEOUT_MS);

  it("is valid POSIX sh", () => {
    const r = sh("/bin/sh", ["-n", "deploy/install.sh"]);
    expect([r.status, r.stderr]).toEqual([0, ""]);
  });

  it("comes in a bundle with Node, the bundled JavaScript, the native core and a manifest of every file", () => {
    expect(tarball.endsWith(`${bundleName("x64")}.tar.gz`)).toBe(true);
    const files = filesUnder(bundle);
    expect(files.filter((f) => !f.startsWith("lib/chunks/"))).toEqual([
      "MANIFEST.sha256",
      "README.md",
      "RELEASE",
      "bin/fleetctl",
      "bin/fleetlet",
      "config.example.json",
      "fleetlet.service",
      "install.sh",
      "lib/THIRD-PARTY-LICENSES",
      "lib/fleetctl.js",
      "lib/fleetlet.js",
      "native/fleetlet-shim",
      "native/fleetlet_native.node",
      "node/LICENSE",
      "node/bin/node",
      "package.json",
    ]);
    expect(files.filter((f) => f.startsWith("lib/chunks/")).every((f) => f.endsWith(".js"))).toBe(true);
    const js = files.filter((f) => f.endsWith(".js"));
    expect(js.filter((f) => readFileSync(join(bundle, f), "utf8").includes("sourceMappingURL="))).toEqual([]);
    expect(readFileSync(join(bundle, "MANIFEST.sha256"), "utf8")).toBe(manifestOf(bundle));
    expect(readFileSync(join(bundle, "RELEASE"), "utf8")).toBe(
      `version=${VERSION}\narch=x64\nnode=${process.versions.node}\n`,
    );
    expect(readElfHeader(join(bundle, "node/bin/node")).machine).toBe(EM_X86_64);
    expect(readElfHeader(join(bundle, "native/fleetlet-shim"))).toEqual({
      elf64le: true,
      type: ET_EXEC,
      machine: EM_X86_64,
      interpreter: false,
    });
    const licenses = readFileSync(join(bundle, "lib/THIRD-PARTY-LICENSES"), "utf8");
    for (const pkg of ["lowdb", "mqtt", "zod"]) expect(licenses).toMatch(new RegExp(`^== ${pkg} \\d`, "m"));
    expect(licenses).not.toMatch(/^== (node-addon-api|typescript|vitest|esbuild) /m);
  });

  it("prints every step on --dry-run and changes nothing, not even /etc", () => {
    const d = dirs("dry");
    const watched = ["/etc/fleetlet", "/etc/fleetlet/config.json", "/etc/systemd/system/fleetlet.service"];
    const before = watched.map((p) => (existsSync(p) ? statSync(p).mtimeMs : null));
    const r = install(bundle, ["--dry-run", "--prefix", d.prefix]);
    expect(r.status, r.stderr).toBe(0);
    for (const step of [
      `bundle fleetlet ${VERSION} for linux-x64: every file matches MANIFEST.sha256`,
      `would run: cp -R ${bundle} ${d.prefix}/versions/${VERSION}.new`,
      `would run: mv ${d.prefix}/versions/${VERSION}.new ${d.prefix}/versions/${VERSION}`,
      `would run: ln -sfn versions/${VERSION} ${d.prefix}/current.new`,
      `would run: mv -T ${d.prefix}/current.new ${d.prefix}/current`,
      existsSync("/etc/fleetlet/config.json")
        ? "keeping the existing /etc/fleetlet/config.json"
        : "would write /etc/fleetlet/config.json (mode 0600)",
      "/etc/systemd/system/fleetlet.service",
      "dry run done: nothing was changed",
    ]) {
      expect(r.stdout).toContain(step);
    }
    expect(existsSync(d.root)).toBe(false);
    expect(watched.map((p) => (existsSync(p) ? statSync(p).mtimeMs : null))).toEqual(before);
  });

  it("refuses a bundle with a changed file, or a file its manifest does not list, and installs nothing", () => {
    const d = dirs("tampered");
    const copy = join(work, "tampered-bundle");
    cpSync(bundle, copy, { recursive: true });
    appendFileSync(join(copy, "lib/fleetlet.js"), "\n// one more line\n");
    const changed = install(copy, installArgs(d));
    expect(changed.status).toBe(1);
    expect(changed.stderr).toContain(
      "install: the bundle does not match its MANIFEST.sha256:\nlib/fleetlet.js: FAILED",
    );
    cpSync(join(bundle, "lib/fleetlet.js"), join(copy, "lib/fleetlet.js"));
    writeFileSync(join(copy, "lib/extra.js"), "export {};\n");
    const added = install(copy, installArgs(d));
    expect(added.status).toBe(1);
    expect(added.stderr).toContain("install: the bundle has files its MANIFEST.sha256 does not list: lib/extra.js");
    expect(existsSync(d.root)).toBe(false);
  });

  describe("installing, upgrading and uninstalling", () => {
    const d = dirs("real");
    const state = join(d.root, "var/lib/fleetlet");
    /** The unpacked bundle as another version would be: its RELEASE, package.json and manifest say so. */
    const otherVersion = (version: string): string => {
      const copy = join(work, `bundle-${version}`);
      cpSync(bundle, copy, { recursive: true });
      for (const [file, from, to] of [
        ["RELEASE", `version=${VERSION}`, `version=${version}`],
        ["package.json", `"version": "${VERSION}"`, `"version": "${version}"`],
      ] as const) {
        writeFileSync(join(copy, file), readFileSync(join(copy, file), "utf8").replace(from, to));
      }
      writeFileSync(join(copy, "MANIFEST.sha256"), manifestOf(copy));
      return copy;
    };
    const current = () => readlinkSync(join(d.prefix, "current"));
    const previous = () => (existsSync(join(d.prefix, "previous")) ? readlinkSync(join(d.prefix, "previous")) : null);
    const versionOf = (link: string) => sh(join(d.prefix, link, "bin/fleetlet"), ["--version"], { env: device });

    it("installs the version beside its siblings, a 0600 config with its own token and the unit, with no toolchain", () => {
      // What an install from a checkout (before bundles) left in the prefix goes away.
      mkdirSync(join(d.prefix, "bin"), { recursive: true });
      writeFileSync(join(d.prefix, "bin/fleetlet.js"), "// from a checkout\n");
      mkdirSync(join(d.prefix, "node_modules/got"), { recursive: true });
      for (const tool of ["node", "npm", "npx", "gcc", "cc", "g++", "make"]) {
        expect(sh("/bin/sh", ["-c", `command -v ${tool}`], { env: device }).status, tool).not.toBe(0);
      }
      const first = install(bundle, installArgs(d));
      expect(first.status, first.stderr).toBe(0);
      expect(current()).toBe(`versions/${VERSION}`);
      expect(previous()).toBeNull();
      expect(readFileSync(join(d.prefix, "current/MANIFEST.sha256"), "utf8")).toBe(manifestOf(bundle));
      expect(["bin/fleetlet.js", "node_modules", "bin"].filter((p) => existsSync(join(d.prefix, p)))).toEqual([]);
      const config = JSON.parse(readFileSync(join(d.etc, "config.json"), "utf8"));
      expect(statSync(join(d.etc, "config.json")).mode & 0o777).toBe(0o600);
      expect(config.api.token).toMatch(/^[A-Za-z0-9_-]{32}$/);
      expect(deviceConfig.safeParse(config).success).toBe(true);
      const unit = readFileSync(join(d.units, "fleetlet.service"), "utf8");
      expect(parseUnit(unit).get("ExecStart")?.value).toBe(
        `${d.prefix}/current/bin/fleetlet agent --config ${d.etc}/config.json`,
      );
      expect(verifyUnit(unit, join(work, "installed-unit"))).toEqual({ status: 0, complaints: [] });
      expect(versionOf("current")).toEqual({ status: 0, stdout: `fleetlet ${VERSION}\n`, stderr: "" });
      // `ps` loads the native addon, which must be found inside the installed version.
      const ps = sh(join(d.prefix, "current/bin/fleetlet"), ["--root", state, "ps"], { env: device });
      expect([ps.status, ps.stderr]).toEqual([0, ""]);

      const second = install(bundle, installArgs(d));
      expect(second.status, second.stderr).toBe(0);
      expect(second.stdout).toContain(`${d.prefix}/versions/${VERSION} is already installed and whole`);
      expect(second.stdout).toContain(`keeping the existing ${d.etc}/config.json`);
      expect(second.stdout).toContain("fleetlet.service is up to date");
      expect(JSON.parse(readFileSync(join(d.etc, "config.json"), "utf8")).api.token).toBe(config.api.token);
    });

    it("upgrades side by side, keeps the version it replaced as previous, and removes older ones", () => {
      const next = otherVersion("99.0.0");
      const upgrade = install(next, installArgs(d));
      expect(upgrade.status, upgrade.stderr).toBe(0);
      expect([current(), previous()]).toEqual(["versions/99.0.0", `versions/${VERSION}`]);
      expect(versionOf("current").stdout).toBe("fleetlet 99.0.0\n");
      expect(versionOf("previous").stdout).toBe(`fleetlet ${VERSION}\n`);
      const after = install(otherVersion("99.1.0"), installArgs(d));
      expect(after.status, after.stderr).toBe(0);
      expect([current(), previous()]).toEqual(["versions/99.1.0", "versions/99.0.0"]);
      expect(after.stdout).toContain(`rm -rf ${d.prefix}/versions/${VERSION}`);
      const back = install(bundle, installArgs(d));
      expect(back.status, back.stderr).toBe(0);
      expect([current(), previous()]).toEqual([`versions/${VERSION}`, "versions/99.1.0"]);
      expect(
        sh("ls", [join(d.prefix, "versions")])
          .stdout.split("\n")
          .filter(Boolean)
          .sort(),
      ).toEqual([VERSION, "99.1.0"].sort());
    });

    it("--uninstall removes the versions and the unit and keeps the config and the state", () => {
      mkdirSync(join(state, "volumes/data"), { recursive: true });
      const dry = install(bundle, ["--uninstall", "--dry-run", ...installArgs(d), "--state-dir", state]);
      expect(dry.status, dry.stderr).toBe(0);
      expect(dry.stdout).toContain(`would run: rm -rf ${d.prefix}/versions`);
      expect(current()).toBe(`versions/${VERSION}`);
      const r = install(bundle, ["--uninstall", ...installArgs(d), "--state-dir", state]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain(`keeping ${d.etc} and ${state} (--purge removes them)`);
      expect([d.prefix, join(d.units, "fleetlet.service")].filter((p) => existsSync(p))).toEqual([]);
      expect(existsSync(join(d.etc, "config.json"))).toBe(true);
      expect(existsSync(join(state, "volumes/data"))).toBe(true);
    });

    it("--uninstall --purge removes every container first, then the state and the config", async () => {
      expect(install(bundle, installArgs(d)).status).toBe(0);
      const cli = join(d.prefix, "current/bin/fleetlet");
      const run = sh(
        cli,
        ["--root", state, "run", "-d", "--name", "left", "--rootfs", rootfs, "--", "/bin/sleep", "600"],
        {
          env: device,
        },
      );
      expect(run.status, run.stderr).toBe(0);
      const ps = JSON.parse(sh(cli, ["--root", state, "ps", "--json"], { env: device }).stdout) as { pid: number }[];
      const pid = ps[0]!.pid;
      expect(existsSync(`/proc/${pid}`)).toBe(true);
      const r = install(bundle, ["--uninstall", "--purge", ...installArgs(d), "--state-dir", state]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain(`rm -f left`);
      await waitFor("the container's process gone", () => !existsSync(`/proc/${pid}`), { timeoutMs: 15_000 });
      expect([d.prefix, d.etc, state, join(d.units, "fleetlet.service")].filter((p) => existsSync(p))).toEqual([]);
    });
  });
});
