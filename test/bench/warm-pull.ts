/**
 * Pulls in this (warm) process, as the agent makes them: its modules loaded,
 * one RegistryClients kept across pulls (connections, TLS sessions, tokens).
 * For the pull benchmark's rows beside the one-shot CLI's, which pay for
 * Node's start and the module loads every time.
 */
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { pullImage, storePullDeps } from "../../agent/registry/pull.js";
import type { RegistryAuthConfig } from "../../agent/registry/registry-client.js";
import { RegistryClients } from "../../agent/registry/registry-clients.js";
import { LocalStore } from "../../agent/store/local-store.js";
import { loadNative } from "../../agent/system/native.js";

export interface WarmCost {
  wall: number;
  /** process.cpuUsage(): every thread of this process, the thread pool's included. */
  cpu: number;
}

/** `runs` pulls of `image` into fresh roots under `work`, after one to warm up; their costs. */
export async function warmPulls(
  image: string,
  registries: Record<string, RegistryAuthConfig>,
  work: string,
  opts: { runs: number; unpack: boolean },
): Promise<WarmCost[]> {
  const native = loadNative().core;
  const clients = new RegistryClients();
  const costs: WarmCost[] = [];
  try {
    for (let r = 0; r <= opts.runs; r++) {
      const root = join(work, `warm-${opts.unpack ? "full" : "dl"}-${r}`);
      mkdirSync(root, 0o700);
      const store = await LocalStore.open(root, native);
      const deps = storePullDeps(store, registries, clients);
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      await pullImage(image, deps, { unpack: opts.unpack });
      const c = process.cpuUsage(c0);
      if (r > 0) costs.push({ wall: performance.now() - t0, cpu: (c.user + c.system) / 1000 });
      rmSync(root, { recursive: true, force: true });
    }
  } finally {
    clients.close();
  }
  return costs;
}
