/**
 * The planner: a pure function from (desired state, actual state, the
 * store's images) to the steps that bring them together, pulls included, in
 * the order the update strategy needs. No I/O: the executor carries the steps
 * out, one handler per kind, and the agent plans again until nothing is left
 * to do. A service's container is replaced when its spec hash (the service
 * spec plus the image's manifest digest) changes; an unchanged service is
 * left alone, running.
 */
import { createHash } from "node:crypto";
import { ADDED_SERVICE_FIELDS, type DesiredState, type ServiceSpec } from "../../schemas/desired.js";
import { serviceNetworks } from "../../schemas/network.js";
import { canonicalJson } from "../protocol/canonical-json.js";

/** How a service's current container stands, as the supervisors see it. */
export type ActualState = "running" | "restarting" | "waitingForDevice" | "exited" | "failed" | "missing";

export interface ActualService {
  name: string;
  containerId: string;
  hash: string;
  state: ActualState;
  /** How the running container wants to be stopped (its own spec's choice). */
  stopTimeoutMs?: number;
  stopSignal?: string;
}

/** What the store knows of an image reference. */
export interface StoredImage {
  /** The manifest digest, as far as the store knows. */
  digest: string;
  /** Resolved for this apply and every layer unpacked: a container can start from it now. */
  ready: boolean;
}

export type Step =
  | { kind: "pull"; image: string }
  | { kind: "start"; service: string; spec: ServiceSpec; hash: string; containerId: string }
  | { kind: "stop"; service: string; containerId: string; timeoutMs: number; signal: string }
  | { kind: "remove"; service: string; containerId: string }
  | { kind: "await-healthy"; services: string[]; withinMs: number };

export type StepKind = Step["kind"];

/**
 * Service fields added after the first release, with their defaults. A field
 * that holds its default is left out of the hash, so a service that does not
 * use it hashes as it did before the field existed: upgrading the agent
 * replaces no running container.
 */
export const ADDED_FIELD_DEFAULTS: Partial<ServiceSpec> = ADDED_SERVICE_FIELDS;

/**
 * The spec and image digest as canonical JSON (RFC 8785), hashed: equal specs
 * hash equal. `networks`, the definitions of the networks the service joins,
 * count too (a changed subnet replaces the container), but only when there
 * are any, so a service on no network hashes as before networks existed.
 */
export function specHash(spec: ServiceSpec, imageDigest: string, networks: Record<string, unknown> = {}): string {
  const hashed: Record<string, unknown> = { ...spec };
  for (const [field, value] of Object.entries(ADDED_FIELD_DEFAULTS))
    if (canonicalJson(hashed[field]) === canonicalJson(value)) delete hashed[field];
  const joined = Object.keys(networks).length > 0 ? { networks } : {};
  return createHash("sha256")
    .update(canonicalJson({ spec: hashed, imageDigest, ...joined }))
    .digest("hex");
}

/** The definitions of the networks a service joins, by name: part of its hash. */
export function joinedNetworks(desired: DesiredState, spec: ServiceSpec): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const name of serviceNetworks(spec)) out[name] = desired.networks[name] ?? { subnet: "auto", internal: false };
  return out;
}

/** The container name of a service at a spec hash: two generations can coexist. */
export function containerName(service: string, hash: string): string {
  return `${service}.${hash.slice(0, 12)}`;
}

const byName = <T>([a]: [string, T], [b]: [string, T]) => (a < b ? -1 : a > b ? 1 : 0);

/** Left alone: its container is the desired one and either runs, or its restart policy is in charge of it. */
function settled(current: ActualService | undefined, hash: string | undefined, spec: ServiceSpec): boolean {
  if (!current || current.hash !== hash) return false;
  if (current.state === "missing") return false;
  return current.state !== "failed" || spec.restart === "never";
}

/** The steps of each kind, gathered service by service; the strategy puts them in order. */
interface Parts {
  pulls: Step[];
  stopOld: Step[];
  starts: Step[];
  goneStops: Step[];
}

function stopAndRemove(current: ActualService, fallback: { timeoutMs: number; signal: string }): Step[] {
  // The old container stops the way its own spec says, not the new one's.
  const timeoutMs = current.stopTimeoutMs ?? fallback.timeoutMs;
  const signal = current.stopSignal ?? fallback.signal;
  return [
    { kind: "stop", service: current.name, containerId: current.containerId, timeoutMs, signal },
    { kind: "remove", service: current.name, containerId: current.containerId },
  ];
}

function gather(desired: DesiredState, actual: Map<string, ActualService>, images: Map<string, StoredImage>): Parts {
  const parts: Parts = { pulls: [], stopOld: [], starts: [], goneStops: [] };
  const pulled = new Set<string>();
  for (const [name, spec] of Object.entries(desired.services).sort(byName)) {
    const image = images.get(spec.image);
    if (!image?.ready && !pulled.has(spec.image)) {
      pulled.add(spec.image);
      parts.pulls.push({ kind: "pull", image: spec.image });
    }
    const hash = image ? specHash(spec, image.digest, joinedNetworks(desired, spec)) : undefined;
    const current = actual.get(name);
    if (settled(current, hash, spec)) continue;
    if (current)
      parts.stopOld.push(...stopAndRemove(current, { timeoutMs: spec.stopTimeoutMs, signal: spec.stopSignal }));
    if (image?.ready && hash) {
      parts.starts.push({ kind: "start", service: name, spec, hash, containerId: containerName(name, hash) });
    }
  }
  for (const [name, current] of [...actual].sort(byName)) {
    if (!desired.services[name])
      parts.goneStops.push(...stopAndRemove(current, { timeoutMs: 10_000, signal: "SIGTERM" }));
  }
  return parts;
}

/** Steps of one kind stand together, so the executor can run them side by side. */
const grouped = (steps: Step[]) => [
  ...steps.filter((s) => s.kind === "stop"),
  ...steps.filter((s) => s.kind === "remove"),
];

/**
 * The next steps. While images are missing, a pass is about them: under
 * `stop-then-download` what will change (judged from the digests the store
 * knows) stops first, so the device never holds both; otherwise the old keeps
 * running while the new downloads. Once every image is ready, the swap:
 * `download-then-swap` stops the old and starts the new; `start-then-stop`
 * starts the new beside the old and stops the old only once the new is
 * healthy. An empty plan means converged.
 */
export function plan(
  desired: DesiredState,
  actual: Map<string, ActualService>,
  images: Map<string, StoredImage>,
): Step[] {
  const p = gather(desired, actual, images);
  const strategy = desired.update.strategy;
  if (p.pulls.length > 0) {
    return strategy === "stop-then-download" ? [...grouped([...p.stopOld, ...p.goneStops]), ...p.pulls] : p.pulls;
  }
  const started = p.starts.map((s) => (s as { service: string }).service);
  const health: Step[] = started.length
    ? [{ kind: "await-healthy", services: started, withinMs: desired.update.healthyWithinMs }]
    : [];
  if (strategy === "start-then-stop") {
    // A service whose container must give way to one of the same name (a failed one) cannot overlap.
    const sameName = new Set(p.starts.map((s) => (s as { containerId: string }).containerId));
    const first = p.stopOld.filter((s) => sameName.has((s as { containerId: string }).containerId));
    const later = p.stopOld.filter((s) => !first.includes(s));
    return [...grouped(first), ...p.starts, ...health, ...grouped([...later, ...p.goneStops])];
  }
  return [...grouped(p.stopOld), ...p.starts, ...health, ...grouped(p.goneStops)];
}
