/**
 * What the runtime says when it was not delegated the cgroups it needs: a
 * read-only v1 hierarchy (as systemd-nspawn mounts the controllers in a guest
 * on a v1 or hybrid host) and a cgroup2 hierarchy that offers no controller
 * (as in a guest booted on the unified hierarchy of a host whose controllers
 * are bound to v1). Both are made here for real: a read-only tmpfs mount
 * stands for the read-only hierarchy, a directory with an empty
 * cgroup.controllers for the bare cgroup2 one.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FleetError } from "../../agent/errors.js";
import { Cgroups } from "../../agent/runtime/cgroup.js";

const work = mkdtempSync(join(tmpdir(), "fleetlet-cgdeleg-"));
const readOnly = join(work, "memory");

function mount(args: string[]): void {
  const r = spawnSync("mount", args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`mount ${args.join(" ")}: ${r.stderr}`);
}

beforeAll(() => {
  mkdirSync(readOnly);
  mount(["-t", "tmpfs", "-o", "ro,size=64k", "fleetlet-ro-cgroup", readOnly]);
});

afterAll(() => {
  spawnSync("umount", [readOnly]);
  rmSync(work, { recursive: true, force: true });
});

function planError(cgroups: Cgroups, limits: Parameters<Cgroups["plan"]>[1]): FleetError {
  try {
    cgroups.plan("c1", limits);
  } catch (err) {
    if (err instanceof FleetError) return err;
    throw err;
  }
  throw new Error("plan() succeeded where it should have been refused");
}

describe("cgroups without delegation", () => {
  it("names the read-only hierarchy and the missing delegation, not a bare EROFS", () => {
    const layout = { mode: "hybrid" as const, v1: new Map([["memory", readOnly]]), unified: null };
    const err = planError(new Cgroups(layout), {});
    expect(err.code).toBe("E_CGROUP");
    expect(err.message).toContain(`create cgroup ${readOnly}/fleetlet`);
    expect(err.message).toContain("the memory cgroup hierarchy is mounted read-only");
    expect(err.message).toContain("was not delegated its cgroups");
    expect((err.cause as NodeJS.ErrnoException).code).toBe("EROFS");
  });

  it("on cgroup2 without the memory controller, refuses a memory limit by naming the controller, not ENOENT", () => {
    const unified = join(work, "unified");
    mkdirSync(join(unified, "fleetlet"), { recursive: true });
    writeFileSync(join(unified, "cgroup.controllers"), "\n");
    for (const d of [unified, join(unified, "fleetlet")]) writeFileSync(join(d, "cgroup.subtree_control"), "\n");
    const cgroups = new Cgroups({ mode: "v2", v1: new Map(), unified });
    const err = planError(cgroups, { memory: 32 << 20 });
    expect(err.code).toBe("E_CGROUP");
    expect(err.message).toContain("cannot apply memory.max: the memory controller is not available");
    expect(err.message).toContain("lists none");
    // Without limits the same hierarchy serves: the container gets its cgroup and the device program.
    const plan = cgroups.plan("c2", {});
    expect(plan.writes).toEqual([]);
    expect(plan.devices?.dir).toBe(join(unified, "fleetlet", "c2"));
  });
});
