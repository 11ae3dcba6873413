/** Builds the busybox test rootfs once for the whole run, and names the run's directory for release bundles; removes both at the end. */
import { rmSync } from "node:fs";
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
  const dir = buildBusyboxRootfs(join(tmpdir(), `fleetlet-test-busybox-${process.pid}`));
  project.provide("busyboxRootfs", dir);
  const releaseDir = join(tmpdir(), `fleetlet-test-release-${process.pid}`);
  project.provide("releaseDir", releaseDir);
  return () => {
    rmSync(releaseDir, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  };
}
