/**
 * The planner: a pure function from (desired, actual) to the steps that
 * converge them. No I/O: the executor carries the steps out, one handler
 * per kind. A service's container is replaced when its spec hash (the
 * service spec plus the image's manifest digest) changes; an unchanged
 * service is left alone, running.
 */
import { createHash } from "node:crypto";
import type { DesiredState, ServiceSpec } from "../../schemas/desired.js";
import { canonicalJson } from "../protocol/canonical-json.js";

export interface ActualService {
  name: string;
  containerId: string;
  hash: string;
  running: boolean;
  /** How the running container wants to be stopped (its own spec's choice). */
  stopTimeoutMs?: number;
  stopSignal?: string;
}

export type Step =
  | { kind: "pull"; service: string; image: string }
  | { kind: "start"; service: string; spec: ServiceSpec; hash: string; containerId: string }
  | { kind: "stop"; service: string; containerId: string; timeoutMs: number; signal: string }
  | { kind: "remove"; service: string; containerId: string }
  | { kind: "await-healthy"; services: string[]; withinMs: number };

export type StepKind = Step["kind"];

/** The spec and image digest as canonical JSON (RFC 8785), hashed: equal specs hash equal. */
export function specHash(spec: ServiceSpec, imageDigest: string): string {
  return createHash("sha256").update(canonicalJson({ spec, imageDigest })).digest("hex");
}

/** The container name of a service at a spec hash: two generations can coexist. */
export function containerName(service: string, hash: string): string {
  return `${service}.${hash.slice(0, 12)}`;
}

export function plan(desired: DesiredState, actual: Map<string, ActualService>, digests: Map<string, string>): Step[] {
  const strategy = desired.update.strategy;
  const pulls: Step[] = [];
  const stopOld: Step[] = [];
  const removeOld: Step[] = [];
  const starts: Step[] = [];
  const removeGone: Step[] = [];
  const changed: string[] = [];
  const restartSame: Step[] = [];
  for (const [name, spec] of Object.entries(desired.services).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const digest = digests.get(spec.image) ?? spec.image;
    const hash = specHash(spec, digest);
    const current = actual.get(name);
    if (current && current.hash === hash && current.running) continue;
    changed.push(name);
    pulls.push({ kind: "pull", service: name, image: spec.image });
    if (current && current.hash === hash) {
      // Same spec, no longer running: the new container takes the old one's name, so the old goes first.
      restartSame.push(
        {
          kind: "stop",
          service: name,
          containerId: current.containerId,
          timeoutMs: spec.stopTimeoutMs,
          signal: spec.stopSignal,
        },
        { kind: "remove", service: name, containerId: current.containerId },
        { kind: "start", service: name, spec, hash, containerId: containerName(name, hash) },
      );
      continue;
    }
    if (current) {
      // The old container stops the way its own spec says, not the new one's.
      stopOld.push({
        kind: "stop",
        service: name,
        containerId: current.containerId,
        timeoutMs: current.stopTimeoutMs ?? spec.stopTimeoutMs,
        signal: current.stopSignal ?? spec.stopSignal,
      });
      removeOld.push({ kind: "remove", service: name, containerId: current.containerId });
    }
    starts.push({ kind: "start", service: name, spec, hash, containerId: containerName(name, hash) });
  }
  const stopGone: Step[] = [];
  for (const [name, current] of [...actual].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (desired.services[name]) continue;
    stopGone.push({
      kind: "stop",
      service: name,
      containerId: current.containerId,
      timeoutMs: current.stopTimeoutMs ?? 10_000,
      signal: current.stopSignal ?? "SIGTERM",
    });
    removeGone.push({ kind: "remove", service: name, containerId: current.containerId });
  }
  // Steps of one kind stand together, so the executor can run them side by side.
  stopOld.push(...removeOld);
  removeGone.unshift(...stopGone);
  const health: Step[] = changed.length
    ? [{ kind: "await-healthy", services: changed, withinMs: desired.update.healthyWithinMs }]
    : [];
  switch (strategy) {
    case "download-then-swap":
      return [...pulls, ...stopOld, ...restartSame, ...starts, ...health, ...removeGone];
    case "stop-then-download":
      // For devices short of disk: nothing old runs (or is kept) while the new downloads.
      return [...stopOld, ...removeGone, ...pulls, ...restartSame, ...starts, ...health];
    case "start-then-stop":
      // Zero downtime: the new generation proves itself before the old one goes.
      return [...pulls, ...restartSame, ...starts, ...health, ...stopOld, ...removeGone];
  }
}
