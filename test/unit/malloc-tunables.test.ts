/**
 * The malloc tunables for processes that move bulk data
 * (agent/system/process-memory.ts): glibc's heap in 2 MiB huge pages, and
 * blocks up to 4 MiB from it, for one-shot commands (the launcher sets
 * them), never for the daemon or its pull workers, and only where the
 * kernel's huge page is 2 MiB.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BULK_MALLOC_MARK, BULK_MALLOC_TUNABLES, tunablesWithoutBulk } from "../../agent/system/process-memory.js";
import { twoMiBHugePages } from "../support/huge-pages.js";
import { fakeReleaseHome } from "../support/release-bundle.js";

const work = mkdtempSync(join(tmpdir(), "fleetlet-malloc-tunables-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("GLIBC_TUNABLES for bulk work", () => {
  it("takes only the tunables out, and nothing is left of a variable that held only them", () => {
    expect(tunablesWithoutBulk(`a=1:${BULK_MALLOC_TUNABLES}:b=2`)).toBe("a=1:b=2");
    expect(tunablesWithoutBulk(BULK_MALLOC_TUNABLES)).toBeUndefined();
    expect(tunablesWithoutBulk("glibc.malloc.hugetlb=2")).toBe("glibc.malloc.hugetlb=2"); // the operator's own
    // Each of ours goes wherever it stands; an operator's own value of the same tunable stays.
    const [hugetlb, threshold] = BULK_MALLOC_TUNABLES.split(":");
    expect(tunablesWithoutBulk(`${threshold}:x=1:${hugetlb}`)).toBe("x=1");
    expect(tunablesWithoutBulk("glibc.malloc.mmap_threshold=65536")).toBe("glibc.malloc.mmap_threshold=65536");
    expect(tunablesWithoutBulk(undefined)).toBeUndefined();
  });

  it("reads the kernel's huge page size: 2 MiB yes; 512 MiB (64 KiB pages), none or unreadable no", () => {
    const file = (text: string) => {
      const path = join(work, `pmd-${text.trim() || "empty"}`);
      writeFileSync(path, text);
      return path;
    };
    expect(twoMiBHugePages(file("2097152\n"))).toBe(true);
    expect(twoMiBHugePages(file("536870912\n"))).toBe(false);
    expect(twoMiBHugePages(file(""))).toBe(false);
    expect(twoMiBHugePages(join(work, "absent"))).toBe(false);
  });
});

describe("the launcher (deploy/launcher.sh)", () => {
  /** A release layout whose "node" prints the GLIBC_TUNABLES and the mark it was given. */
  function layout(): string {
    const value = (name: string) => `"\${${name}-unset}"`; // the variable, or "unset"
    return fakeReleaseHome(
      join(work, "versions", "v1"),
      `printf "%s %s" ${value("GLIBC_TUNABLES")} ${value(BULK_MALLOC_MARK)}`,
    );
  }

  it("gives every command the tunables after the caller's own where huge pages are 2 MiB, and none elsewhere", () => {
    const bin = layout();
    const run = (env: NodeJS.ProcessEnv) => spawnSync(bin, ["images"], { encoding: "utf8", env });
    const { GLIBC_TUNABLES: _, [BULK_MALLOC_MARK]: __, ...base } = process.env;
    if (twoMiBHugePages()) {
      expect(run(base).stdout).toBe(`${BULK_MALLOC_TUNABLES} 1`);
      expect(run({ ...base, GLIBC_TUNABLES: "a=1" }).stdout).toBe(`a=1:${BULK_MALLOC_TUNABLES} 1`);
    } else {
      // This kernel has no 2 MiB transparent huge pages: the launcher must leave the variables alone.
      expect(run(base).stdout).toBe("unset unset");
      expect(run({ ...base, GLIBC_TUNABLES: "a=1" }).stdout).toBe("a=1 unset");
    }
  });
});
