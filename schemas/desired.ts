/**
 * The desired-state document an operator publishes (docs/contract.md): which
 * services run, from which images, with which limits, and how updates roll.
 * Parse errors name the field path, e.g. "services.web.restart: …".
 */

import { hostName, NAME_PATTERN, volumeTarget } from "./container.js";
import { deviceList, groupRef } from "./device.js";
import { checkServiceNetworks, networkSpec, portSpec } from "./network.js";
import { byteQuantity } from "./quantity.js";
import { z } from "./zod.js";

const serviceName = z.string().regex(NAME_PATTERN, "expected letters, digits, '_', '.' or '-'");

export const healthcheck = z.object({
  exec: z.array(z.string()).min(1, "a command is needed"),
  intervalMs: z.number().int().min(100).default(5000),
  timeoutMs: z.number().int().min(100).default(5000),
  retries: z.number().int().min(1).default(3),
});

export const serviceSpec = z.object({
  image: z.string().min(1, "an image reference is needed"),
  command: z.array(z.string()).optional(),
  entrypoint: z.array(z.string()).optional(),
  env: z.record(z.string().regex(/^[^=\0]+$/, "expected a variable name"), z.string()).default({}),
  workingDir: z.string().optional(),
  user: z.string().optional(),
  hostname: hostName.optional(),
  resources: z
    .object({
      memory: byteQuantity.optional(),
      cpus: z.number().positive().max(1024).optional(),
      pids: z.number().int().positive().optional(),
    })
    .default({}),
  restart: z.enum(["always", "on-failure", "never"]).default("always"),
  healthcheck: healthcheck.optional(),
  volumes: z
    .array(
      z.object({
        name: serviceName,
        target: volumeTarget,
        readOnly: z.boolean().default(false),
      }),
    )
    .default([]),
  network: z.enum(["none", "host"]).default("none"),
  /** Networks of the document this service joins (a bridge each); peers reach it by its name. */
  networks: z.array(serviceName).default([]),
  /** Host ports published to the service: "8080:80", "127.0.0.1:9090:9090", "5353:53/udp". */
  ports: z.array(portSpec).default([]),
  readOnlyRootfs: z.boolean().default(false),
  /** Run a minimal init as PID 1, with the command as its child: signals forwarded, zombies reaped. */
  init: z.boolean().default(false),
  /** Host devices given to the container, each path allowed by the device's policy.devices. */
  devices: deviceList,
  /** Supplementary groups of the process: names in the image's /etc/group, or numbers. */
  groupAdd: z.array(groupRef).default([]),
  stopSignal: z.string().default("SIGTERM"),
  stopTimeoutMs: z.number().int().min(0).default(10_000),
});
export type ServiceSpec = z.output<typeof serviceSpec>;

/** `agent`: a release version (as a bundle's RELEASE names it) and the index `fleetctl push-agent` pushed, by digest. */
export const agentTarget = z.object({
  version: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/, "expected a release version such as 0.3.0"),
  image: z
    .string()
    .regex(/@sha256:[a-f0-9]{64}$/, "expected a reference pinned by digest (registry/repository@sha256:…)"),
});
export type AgentTarget = z.output<typeof agentTarget>;

const documentFields = z.object({
  apiVersion: z.literal("fleetlet/v1", { error: 'expected "fleetlet/v1"' }),
  deployment: z.string().min(1).max(200),
  generation: z.number().int().nonnegative(),
  /** Container networks, each a bridge of its own; services join them by name. */
  networks: z.record(serviceName, networkSpec).default({}),
  services: z.record(serviceName, serviceSpec),
  update: z
    .object({
      strategy: z.enum(["download-then-swap", "stop-then-download", "start-then-stop"]).default("download-then-swap"),
      healthyWithinMs: z.number().int().min(0).default(60_000),
      rollback: z.boolean().default(true),
    })
    .default({ strategy: "download-then-swap", healthyWithinMs: 60_000, rollback: true }),
  /** Read from group documents only: which share of the group takes this deployment, or rolls it back. */
  rollout: z
    .object({
      percent: z.number().min(0).max(100).default(100),
      rollback: z.boolean().default(false),
    })
    .default({ percent: 100, rollback: false }),
  /** Where the document is meant to go ("device/<id>" or "group/<name>"); fleetctl sets it, so a signed document cannot be replayed to another topic. */
  target: z
    .string()
    .regex(/^(device|group)\/[^/]+$/, 'expected "device/<id>" or "group/<name>"')
    .optional(),
  /** The time after which a device refuses the document (RFC 3339); fleetctl sets it with --valid-for. */
  notAfter: z.iso
    .datetime({ offset: true, error: "expected an RFC 3339 time such as 2026-01-31T12:00:00Z" })
    .optional(),
  /** The agent version the device should run, and the OCI artifact its bundle comes from (`fleetctl push-agent`). */
  agent: agentTarget.optional(),
  signature: z.string().optional(),
});

/**
 * Service fields added after the first release, at their defaults. A spec an
 * older agent stored in db.json lacks them and is read with them filled in
 * (withAddedFields); a field that holds its default is left out of the spec
 * hash (reconcile/plan.ts). So an agent upgrade neither trips over a running
 * service nor replaces it.
 */
export const ADDED_SERVICE_FIELDS = {
  init: false,
  devices: [],
  groupAdd: [],
  networks: [],
  ports: [],
} as const satisfies Partial<ServiceSpec>;

/** A stored spec with the fields added since it was stored, at their defaults. */
export function withAddedFields(spec: ServiceSpec): ServiceSpec {
  return { ...(structuredClone(ADDED_SERVICE_FIELDS) as Partial<ServiceSpec>), ...spec } as ServiceSpec;
}

/** A stored document with the fields added since it was stored (its networks, its services'), at their defaults. */
export function documentWithAddedFields(doc: DesiredState): DesiredState {
  const services = Object.fromEntries(Object.entries(doc.services).map(([name, s]) => [name, withAddedFields(s)]));
  return { ...doc, networks: doc.networks ?? {}, services };
}

/** The document, held also to the rules that span its services and networks. */
export const desiredState = documentFields.superRefine((doc, ctx) => {
  for (const issue of checkServiceNetworks(doc)) ctx.addIssue({ code: "custom", input: doc, ...issue });
});
export type DesiredState = z.output<typeof desiredState>;
export type DesiredStateInput = z.input<typeof desiredState>;
