import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseArgs } from "../../agent/cli/args.js";
import { parseCommandLine } from "../../agent/cli/command-line.js";
import { FLEETCTL_COMMANDS, FLEETCTL_GLOBALS } from "../../agent/cli/fleetctl.js";
import { FLEETLET_COMMANDS, FLEETLET_GLOBALS } from "../../agent/cli/fleetlet.js";
import { parseRun, runSpec } from "../../agent/cli/run-command.js";
import { capabilitySet } from "../../agent/runtime/capabilities.js";
import { readLog } from "../../agent/runtime/log-tail.js";
import { formatBytes, parseBytes } from "../../schemas/quantity.js";

/** A command line as `fleetlet` reads it: the global options, the command, its own arguments. */
const fleetletLine = (...argv: string[]) => parseCommandLine(argv, FLEETLET_GLOBALS, FLEETLET_COMMANDS);
const fleetctlLine = (...argv: string[]) => parseCommandLine(argv, FLEETCTL_GLOBALS, FLEETCTL_COMMANDS);
/** `fleetlet run ARGV` as runSpec gets it. */
const runLine = (argv: string[]) => parseRun(fleetletLine("run", ...argv).args);

describe("parseBytes", () => {
  it.each([
    ["32Mi", 32 * 1024 ** 2],
    ["32m", 32 * 1024 ** 2],
    ["32M", 32 * 1024 ** 2],
    ["512k", 512 * 1024],
    ["1G", 1024 ** 3],
    ["1.5Gi", 1.5 * 1024 ** 3],
    ["2MB", 2_000_000],
    ["100", 100],
    ["64MiB", 64 * 1024 ** 2],
  ])("reads %s as %i bytes", (text, bytes) => {
    expect(parseBytes(text)).toBe(bytes);
  });
  it.each(["", "12x", "-5M", "M", "1e9", "3 parsecs"])("refuses %j", (text) => {
    expect(parseBytes(text)).toBeUndefined();
  });
  it("formats with binary units", () => {
    expect(formatBytes(32 * 1024 ** 2)).toBe("32 MiB");
    expect(formatBytes(1536)).toBe("1.5 KiB");
  });
});

describe("parseArgs", () => {
  const specs = [
    { name: "env", short: "e", type: "string" as const, multiple: true },
    { name: "rm", type: "boolean" as const },
    { name: "name", type: "string" as const },
  ];
  it("stops at the first positional so the command keeps its own flags", () => {
    const r = parseArgs(["--rm", "-e", "A=1", "-eB=2", "--name=x", "img", "sh", "-c", "echo"], specs, {
      stopAtPositional: true,
    });
    expect(r.options).toEqual({ env: ["A=1", "B=2"], rm: true, name: "x" });
    expect(r.positionals).toEqual(["img"]);
    expect(r.rest).toEqual(["sh", "-c", "echo"]);
  });
  it("takes everything after -- as the command", () => {
    const r = parseArgs(["--rm", "--", "--rm", "x"], specs);
    expect(r.rest).toEqual(["--rm", "x"]);
    expect(r.sawSeparator).toBe(true);
  });
  it("names the unknown option", () => {
    expect(() => parseArgs(["--bogus"], specs)).toThrow(/unknown option --bogus/);
    expect(() => parseArgs(["--name"], specs)).toThrow(/--name needs a value/);
  });
});

describe("global options", () => {
  it.each<[string, string[], Record<string, unknown>]>([
    ["before the command word", ["--root", "/s", "ps", "-a"], { root: "/s" }],
    ["after the command word", ["ps", "--root", "/s", "-a"], { root: "/s" }],
    ["as --root=DIR", ["images", "--json", "--root=/s"], { root: "/s" }],
    [
      "after agent, as the systemd unit gives --config",
      ["agent", "--config", "/etc/f.json"],
      { config: "/etc/f.json" },
    ],
    ["among run's options", ["run", "--rm", "--root", "/s", "--rootfs", "/r", "--", "true"], { root: "/s" }],
    ["just before run's IMAGE", ["run", "--rm", "--config=/c", "img"], { config: "/c" }],
    ["on both sides, the later one winning", ["--root", "/a", "ps", "--root", "/b"], { root: "/b" }],
    ["for --version after a command", ["logs", "--version"], { version: true }],
  ])("are taken %s", (_what, argv, globals) => {
    expect(fleetletLine(...argv).globals).toEqual(globals);
  });

  it("are taken out of the command's own options", () => {
    const { name, args } = fleetletLine("ps", "--root", "/s", "-a");
    expect(name).toBe("ps");
    expect(args.options).toEqual({ all: true });
    expect(args.positionals).toEqual([]);
  });

  it.each<[string, string[], string[]]>([
    ["after --", ["--rootfs", "/r", "--", "sh", "--root", "/x"], ["sh", "--root", "/x"]],
    ["after run's IMAGE", ["img", "--root", "/x"], ["--root", "/x"]],
    ["after IMAGE --", ["img", "--", "env", "--config=/x"], ["env", "--config=/x"]],
    ["after the command of run --rootfs", ["--rootfs", "/r", "sh", "--root", "/x"], ["sh", "--root", "/x"]],
  ])("are left to the container's command %s", (_what, argv, command) => {
    const line = fleetletLine("run", ...argv);
    expect(line.globals).toEqual({});
    expect(parseRun(line.args).command).toEqual(command);
  });

  it.each<[string[], Record<string, unknown>]>([
    [["status", "--group", "g", "--config", "/c"], { config: "/c" }],
    [["deploy", "--config=/c", "--group", "g", "f.json"], { config: "/c" }],
    [["rollout", "abort", "--group", "g", "--config", "/c"], { config: "/c" }],
    [["--config", "/a", "push", "--config", "/b", "dir", "ref"], { config: "/b" }],
  ])("are taken by fleetctl in %j", (argv, globals) => {
    expect(fleetctlLine(...argv).globals).toEqual(globals);
  });

  it("still name an unknown option among the command's", () => {
    expect(() => fleetletLine("ps", "--roots", "/s")).toThrow(/unknown option --roots/);
  });
});

describe("run's image and command", () => {
  it.each<[string[], string | undefined, string[]]>([
    [["img", "--", "echo", "hi"], "img", ["echo", "hi"]],
    [["img", "echo", "hi"], "img", ["echo", "hi"]],
    [["img"], "img", []],
    [["img", "--"], "img", []],
    [["--", "img", "echo"], "img", ["echo"]],
    [["img", "sh", "--", "x"], "img", ["sh", "--", "x"]],
    [["--rootfs", "/r", "--", "echo", "hi"], undefined, ["echo", "hi"]],
    [["--rootfs", "/r", "echo", "hi"], undefined, ["echo", "hi"]],
    [["--rootfs", "/r", "echo", "--", "hi"], undefined, ["echo", "--", "hi"]],
  ])("reads run %j as image %s running %j", (argv, image, command) => {
    expect(runLine(argv)).toMatchObject({ image, command });
  });
});

describe("runSpec", () => {
  it.each([
    ["/dev/ttyUSB0", { path: "/dev/ttyUSB0" }],
    ["/dev/ttyUSB0:rw", { path: "/dev/ttyUSB0", permissions: "rw" }],
    ["/dev/ttyUSB0:/dev/ttyS0", { path: "/dev/ttyUSB0", target: "/dev/ttyS0" }],
    ["/dev/ttyUSB0:/dev/ttyS0:r", { path: "/dev/ttyUSB0", target: "/dev/ttyS0", permissions: "r" }],
    // udev's by-path names hold colons
    [
      "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0",
      { path: "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0" },
    ],
    [
      "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0:/dev/ttyS0:r",
      { path: "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0", target: "/dev/ttyS0", permissions: "r" },
    ],
  ])("reads --device %s", (flag, device) => {
    expect(runSpec(runLine(["--rootfs", "/r", "--device", flag, "--", "true"])).spec.devices).toEqual([device]);
  });

  it.each([":/dev/ttyS0", ":rw"])("refuses --device %s, naming the flag", (flag) => {
    expect(() => runSpec(runLine(["--rootfs", "/r", "--device", flag, "--", "true"]))).toThrow("--device: expected");
  });

  it("builds a spec from the issue's example command line", () => {
    const { spec, rm } = runSpec(
      runLine([
        "--rm",
        "--rootfs",
        "/r",
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
        "echo",
      ]),
    );
    expect(rm).toBe(true);
    expect(spec).toMatchObject({
      layers: ["/r"],
      hostname: "box1",
      command: ["/bin/sh", "-c", "echo"],
      env: ["FOO=bar"],
      resources: { memory: 32 * 1024 * 1024, cpus: 0.25, pids: 64 },
    });
  });
  it.each([
    [["--rootfs", "/r", "--memory", "lots", "--", "true"], /--memory: expected a size/],
    [["--rootfs", "/r", "--cpus", "half", "--", "true"], /--cpus: expected a number/],
    [["--rootfs", "/r", "--pids", "1.5", "--", "true"], /--pids: expected a whole number/],
    [["--rootfs", "/r", "-v", "nocolon", "--", "true"], /--volume: expected NAME:\/path/],
    [["--rootfs", "/r", "--network", "bridge", "--", "true"], /--network: expected none or host/],
    [["--rootfs", "/r"], /no command given/],
  ])("refuses %j, naming the flag", (argv, message) => {
    expect(() => runSpec(runLine(argv))).toThrow(message);
  });
});

describe("capabilitySet", () => {
  it("keeps podman's eleven by default", () => {
    expect(capabilitySet([], [])).toEqual([0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 31]);
  });
  it("adds and drops by name, with or without CAP_", () => {
    expect(capabilitySet(["CAP_NET_RAW"], ["chown", "KILL"])).toEqual([1, 3, 4, 6, 7, 8, 10, 13, 18, 31]);
    expect(capabilitySet(["NET_ADMIN"], ["ALL"])).toEqual([12]);
  });
  it("names an unknown capability", () => {
    expect(() => capabilitySet(["SYS_MAGIC"], [])).toThrow(/capAdd: unknown capability "SYS_MAGIC"/);
  });
});

describe("readLog", () => {
  it("joins rotated generations oldest first and tails by lines", () => {
    const dir = mkdtempSync(join(tmpdir(), "fleetlet-log-"));
    const log = join(dir, "container.log");
    writeFileSync(`${log}.2`, "a\nb\n");
    writeFileSync(`${log}.1`, "c\n");
    writeFileSync(log, "d\ne\n");
    expect(readLog(log, 2)).toBe("a\nb\nc\nd\ne\n");
    expect(readLog(log, 2, 3)).toBe("c\nd\ne\n");
    expect(readLog(log, 1, 10)).toBe("c\nd\ne\n");
  });
});
