/** Builds the busybox test rootfs once for the whole run. */
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
import { buildBusyboxRootfs } from "../support/busybox-rootfs.js";

declare module "vitest" {
  export interface ProvidedContext {
    busyboxRootfs: string;
  }
}

export default function setup(project: TestProject): void {
  const dir = buildBusyboxRootfs(join(tmpdir(), `fleetlet-test-busybox-${process.pid}`));
  project.provide("busyboxRootfs", dir);
}
