/** A fresh state directory per test file, removed afterwards with its containers. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Runtime } from "../../agent/runtime/runtime.js";

export function freshRoot(): string {
  return mkdtempSync(join(tmpdir(), "fleetlet-root-"));
}

/** Force-removes every container left in `root`, then the directory and its containers' cgroup parents. */
export async function cleanupRoot(root: string): Promise<void> {
  const runtime = new Runtime({ root });
  for (const c of runtime.list()) await runtime.delete(c.id, { force: true });
  runtime.sweep();
  await runtime.network.sweep(); // pinned namespaces a failed test left: a mount point cannot be erased
  await runtime.settled();
  runtime.cgroups.removeParent();
  rmSync(root, { recursive: true, force: true });
}
