/**
 * Gives the run a temporary directory of its own, in which the test files
 * make theirs (TMPDIR, inherited by the test workers and whatever they
 * start), builds the busybox test rootfs in it once for the whole run, and
 * names the run's directory for release bundles. At the end the whole
 * directory goes, so that a run leaves nothing behind in /tmp, even what a
 * test file forgot.
 */
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
import { buildBusyboxRootfs } from "../support/busybox-rootfs.js";

declare module "vitest" {
  export interface ProvidedContext {
    busyboxRootfs: string;
    /** Where test/support/release-bundle.ts builds each bundle once for the run (created when first asked). */
    releaseDir: string;
  }
}

export default function setup(project: TestProject): () => void {
  const run = join(tmpdir(), `fleetlet-test-run-${process.pid}`);
  mkdirSync(run, { recursive: true });
  chmodSync(run, 0o1777); // as /tmp: the test brokers and registries may run as other users
  process.env.TMPDIR = run;
  project.provide("busyboxRootfs", buildBusyboxRootfs(join(run, "busybox")));
  project.provide("releaseDir", join(run, "release"));
  return () => {
    try {
      rmSync(run, { recursive: true, force: true });
    } catch (err) {
      // A mount a failed test left behind, say: the rest is gone, and this says where to look.
      process.stderr.write(`test teardown: could not remove ${run} whole: ${(err as Error).message}\n`);
    }
  };
}
