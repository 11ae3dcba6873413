/**
 * The allowed import directions, in one place: the architecture test checks
 * the code against them and docs/architecture.md shows them. Data flows from
 * the transport through the schemas into the reconciler, down to the store,
 * the registry client and the runtime, and through the system binding to the
 * kernel; a layer imports only the layers listed for it.
 */

export type Layer =
  | "cli"
  | "api"
  | "fleet"
  | "transport"
  | "reconcile"
  | "registry"
  | "store"
  | "runtime"
  | "state"
  | "config"
  | "protocol"
  | "system"
  | "base"
  | "schemas";

const BELOW_ALL: Layer[] = ["base", "schemas"];

export const LAYERS: Record<Layer, Layer[]> = {
  /** The entry points wire everything together. */
  cli: [
    "api",
    "fleet",
    "transport",
    "reconcile",
    "registry",
    "store",
    "runtime",
    "state",
    "config",
    "protocol",
    "system",
    ...BELOW_ALL,
  ],
  /** The status endpoint reads what the agent hands it. */
  api: [...BELOW_ALL],
  /** The operator side talks MQTT and shares the wire format with the agent. */
  fleet: ["transport", "protocol", ...BELOW_ALL],
  /** The MQTT session knows topics, not what the documents mean. */
  transport: ["protocol", ...BELOW_ALL],
  /** The agent: desired state in, steps out through the store, registry and runtime. */
  reconcile: ["registry", "store", "runtime", "state", "protocol", ...BELOW_ALL],
  /** Pulls compose the store's content, snapshots and images. */
  registry: ["store", "system", ...BELOW_ALL],
  store: ["state", "system", ...BELOW_ALL],
  runtime: ["system", ...BELOW_ALL],
  /** db.json, locked through the system binding. */
  state: ["system", ...BELOW_ALL],
  config: [...BELOW_ALL],
  /** What both ends of the wire share: topics, canonical JSON, signatures, waves. */
  protocol: [...BELOW_ALL],
  /** The native core's binding, the process's own memory, the lock across processes and the state root's modes. */
  system: [...BELOW_ALL],
  /** The error type, a bounded-concurrency loop and a monotonic clock. */
  base: ["schemas"],
  schemas: [],
};

/** npm packages that only one layer (or a few) may import. */
export const PACKAGE_OWNERS: Record<string, Layer[]> = {
  mqtt: ["transport", "fleet"],
  lowdb: ["state"],
  zod: ["schemas"],
};

/** The layer of a file (a path from the project root), or undefined outside the shipped code. */
export function layerOf(file: string): Layer | undefined {
  if (file.startsWith("schemas/")) return "schemas";
  const m = /^agent\/(?:([^/]+)\/)?[^/]+\.ts$/.exec(file);
  if (!m) return undefined;
  if (m[1] === undefined) return "base";
  return m[1] in LAYERS ? (m[1] as Layer) : undefined;
}
