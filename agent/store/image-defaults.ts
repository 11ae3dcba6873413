/** What an image brings to a container: its layers and the run defaults of its config. */
import type { ImageRecord } from "./image-store.js";
import type { LocalStore } from "./local-store.js";

export interface ImageDefaults {
  ref: string;
  digest?: string | undefined;
  layers: string[];
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir?: string | undefined;
  user?: string | undefined;
  stopSignal?: string | undefined;
}

/** `store`: anything that knows an image's layer dirs (the LocalStore, or the fleet simulation's). */
export function imageDefaults(store: Pick<LocalStore, "layerDirs">, record: ImageRecord): ImageDefaults {
  const c = record.config;
  return {
    ref: record.ref,
    digest: record.digest,
    layers: store.layerDirs(record),
    entrypoint: c.Entrypoint ?? [],
    cmd: c.Cmd ?? [],
    env: c.Env ?? [],
    workingDir: c.WorkingDir || undefined,
    user: c.User || undefined,
    stopSignal: c.StopSignal || undefined,
  };
}

/** Environment lists merged by key: later entries win. */
export function mergeEnv(...lists: string[][]): string[] {
  const out = new Map<string, string>();
  for (const e of lists.flat()) out.set(e.split("=")[0]!, e);
  return [...out.values()];
}
