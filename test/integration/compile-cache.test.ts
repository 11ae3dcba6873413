/**
 * `fleetlet` keeps Node's compile cache in ROOT/compile-cache: made 0700 and
 * root's in a state root fleetlet has used, filled by a command, and left
 * alone (the command runs without it, with a warning) when it is not as made
 * there: another user's, a symbolic link, open to others. Corrupt entries
 * are compiled afresh, never run. Each install has a cache of its own, and
 * one no command has used for a week is removed.
 */
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CliResult, fleetlet } from "../support/fleetlet-cli.js";

let work: string;
let config: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-compile-cache-"));
  config = join(work, "config.json");
  writeFileSync(config, "{}");
});

afterAll(() => rmSync(work, { recursive: true, force: true }));

/** `fleetlet images --json` on `root`: a command that loads the store's modules. */
function images(root: string): CliResult {
  const r = fleetlet(root, ["--config", config, "images", "--json"]);
  expect(r.status, r.stderr).toBe(0);
  expect(JSON.parse(r.stdout)).toEqual([]);
  return r;
}

/** Every file under dir, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

/** A state root that one command has used already. */
function usedRoot(name: string): string {
  const root = join(work, name);
  images(root);
  return root;
}

describe("the compile cache in the state root", () => {
  it("is made 0700 and root's once the root holds fleetlet's state, and a command fills it", () => {
    const root = join(work, "fresh");
    images(root); // the root did not exist when the command started: nothing is made in it
    expect(readdirSync(root)).not.toContain("compile-cache");
    images(root);
    const st = lstatSync(join(root, "compile-cache"));
    expect(st.isDirectory()).toBe(true);
    expect(st.mode & 0o777).toBe(0o700);
    expect([st.uid, st.gid]).toEqual([0, 0]);
    expect(filesUnder(join(root, "compile-cache")).length).toBeGreaterThan(0);
    expect(statSync(root).mode & 0o777).toBe(0o700);
  });

  it("is not made in a directory that holds no fleetlet state", () => {
    const root = join(work, "empty");
    mkdirSync(root, { mode: 0o700 });
    images(root);
    expect(readdirSync(root)).not.toContain("compile-cache");
  });

  const wrong: Array<[string, (dir: string) => void, RegExp]> = [
    [
      "owned by another user",
      (dir) => {
        mkdirSync(dir, { mode: 0o700 });
        chownSync(dir, 1000, 1000);
      },
      /owned by uid 1000/,
    ],
    [
      "open to other users",
      (dir) => {
        mkdirSync(dir);
        chmodSync(dir, 0o755);
      },
      /has mode 0755/,
    ],
    [
      "a symbolic link",
      (dir) => {
        const target = `${dir}-target`;
        mkdirSync(target, { mode: 0o700 });
        symlinkSync(target, dir);
      },
      /symbolic link/,
    ],
  ];

  it.each(wrong)("is not used when %s: the command runs, warns, and nothing is written", (_, make, why) => {
    const root = usedRoot(`wrong-${randomBytes(4).toString("hex")}`);
    const dir = join(root, "compile-cache");
    make(dir);
    const r = images(root);
    expect(r.stderr).toContain("fleetlet: warning: not using the compile cache");
    expect(r.stderr).toMatch(why);
    expect(filesUnder(dir)).toEqual([]);
    if (lstatSync(dir).isSymbolicLink()) expect(filesUnder(`${dir}-target`)).toEqual([]);
  });

  it("keeps a cache per install, and removes another install's that no command has touched for a week", () => {
    const root = usedRoot("installs");
    images(root); // fills this install's cache
    const top = join(root, "compile-cache");
    const [own, ...others] = readdirSync(top);
    expect(others).toEqual([]);
    expect(own).toMatch(/^[0-9a-f]{8}$/);
    const day = 86_400;
    const now = Date.now() / 1000;
    for (const [name, age] of [
      ["0ld1n5ta", 8 * day],
      ["rec3ntly", 6 * day],
    ] as const) {
      mkdirSync(join(top, name), { mode: 0o700 });
      writeFileSync(join(top, name, "entry"), "code of another version");
      utimesSync(join(top, name), now - age, now - age);
    }
    utimesSync(join(top, own!), now - 30 * day, now - 30 * day); // our own: touched again by the next start
    images(root);
    expect(readdirSync(top).sort()).toEqual([own, "rec3ntly"].sort());
    expect(Date.now() - statSync(join(top, own!)).mtimeMs).toBeLessThan(3_600_000);
    expect(filesUnder(join(top, own!)).length).toBeGreaterThan(0);
  });

  it("compiles afresh, and writes anew, entries that are corrupt", () => {
    const root = usedRoot("corrupt");
    images(root); // fills the cache
    const entries = filesUnder(join(root, "compile-cache"));
    expect(entries.length).toBeGreaterThan(0);
    const garbage = new Map(entries.map((f) => [f, randomBytes(statSync(f).size)]));
    for (const [f, bytes] of garbage) writeFileSync(f, bytes);
    const r = images(root);
    expect(r.stderr).toBe("");
    const rewritten = entries.filter((f) => !readFileSync(f).equals(garbage.get(f)!));
    expect(rewritten.length).toBeGreaterThan(0);
  });
});
