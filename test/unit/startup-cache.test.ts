import { describe, expect, it } from "vitest";
import { parseCommandLine } from "../../agent/cli/command-line.js";
import { FLEETLET_COMMANDS, FLEETLET_GLOBALS } from "../../agent/cli/fleetlet.js";
import { cachedCommand, earlyStateRoot } from "../../agent/cli/startup-cache.js";
import { DEFAULT_ROOT, resolveRoot } from "../../schemas/default-paths.js";

describe("the state root the entry reads before the commands load", () => {
  const env = {};
  it.each([
    [["--root", "/r", "pull", "img"], "/r"],
    [["--root=/r", "--config", "/c", "pull", "img"], "/r"],
    [["--config", "/c", "images"], DEFAULT_ROOT],
    [["images"], DEFAULT_ROOT],
    [["__pull-worker"], DEFAULT_ROOT],
  ])("%j names %s, as the full parse does", (argv, root) => {
    expect(earlyStateRoot(argv, env)).toBe(root);
    const line = parseCommandLine(argv, FLEETLET_GLOBALS, FLEETLET_COMMANDS);
    expect(resolveRoot(line.globals.root as string | undefined, env)).toBe(root);
  });

  it("takes FLEETLET_ROOT when no --root is given", () => {
    expect(earlyStateRoot(["images"], { FLEETLET_ROOT: "/env" })).toBe("/env");
    expect(earlyStateRoot(["--root", "/r", "images"], { FLEETLET_ROOT: "/env" })).toBe("/r");
  });

  it.each([
    [["pull", "--root", "/later", "img"]],
    [["images", "--root=/later"]],
    [["run", "img", "sh", "--root", "/theirs"]],
    [["--bogus", "images"]],
    [["--root"]],
  ])("is not told for %j (a --root after the command word, or a usage error): no cache", (argv) => {
    expect(earlyStateRoot(argv, env)).toBeUndefined();
  });
});

describe("the commands the compile cache serves", () => {
  it("are the one-shot commands and the pull worker, not the daemon, whose resident memory counts", () => {
    expect(cachedCommand(["pull", "img"])).toBe(true);
    expect(cachedCommand(["--root", "/r", "__pull-worker"])).toBe(true);
    expect(cachedCommand(["agent"])).toBe(false);
    expect(cachedCommand(["--root", "/r", "--config", "/c", "agent", "--lite-mode"])).toBe(false);
  });
});
