/**
 * The desired-state document an operator publishes (docs/contract.md): which
 * services run, from which images, with which limits, and how updates roll.
 * Parse errors name the field path, e.g. "services.web.restart: …".
 */

import { hostName, NAME_PATTERN, volumeTarget } from "./container.js";
import { deviceList, groupRef } from "./device.js";
import { checkServiceNetworks, networkSpec, portSpec } from "./network.js";
import { byteQuantity } from "./quantity.js";
import * as z from "./zod.js";

const serviceName = z.string().check(z.regex(NAME_PATTERN, "expected letters, digits, '_', '.' or '-'"));

/** A whole number of milliseconds, at least `min`, `fallback` when absent. */
const millis = (min: number, fallback: number) => z._default(z.number().check(z.int(), z.minimum(min)), fallback);

export const healthcheck = z.object({
  exec: z.array(z.string()).check(z.minLength(1, "a command is needed")),
  intervalMs: millis(100, 5000),
  timeoutMs: millis(100, 5000),
  retries: z._default(z.number().check(z.int(), z.minimum(1)), 3),
});

export const serviceSpec = z.object({
  image: z.string().check(z.minLength(1, "an image reference is needed")),
  command: z.optional(z.array(z.string())),
  entrypoint: z.optional(z.array(z.string())),
  env: z._default(z.record(z.string().check(z.regex(/^[^=\0]+$/, "expected a variable name")), z.string()), {}),
  workingDir: z.optional(z.string()),
  user: z.optional(z.string()),
  hostname: z.optional(hostName),
  resources: z._default(
    z.object({
      memory: z.optional(byteQuantity),
      cpus: z.optional(z.number().check(z.positive(), z.maximum(1024))),
      pids: z.optional(z.number().check(z.int(), z.positive())),
    }),
    {},
  ),
  restart: z._default(z.enum(["always", "on-failure", "never"]), "always"),
  healthcheck: z.optional(healthcheck),
  volumes: z._default(
    z.array(
      z.object({
        name: serviceName,
        target: volumeTarget,
        readOnly: z._default(z.boolean(), false),
      }),
    ),
    [],
  ),
  network: z._default(z.enum(["none", "host"]), "none"),
  /** Networks of the document this service joins (a bridge each); peers reach it by its name. */
  networks: z._default(z.array(serviceName), []),
  /** Host ports published to the service: "8080:80", "127.0.0.1:9090:9090", "5353:53/udp". */
  ports: z._default(z.array(portSpec), []),
  readOnlyRootfs: z._default(z.boolean(), false),
  /** Run a minimal init as PID 1, with the command as its child: signals forwarded, zombies reaped. */
  init: z._default(z.boolean(), false),
  /** Host devices given to the container, each path allowed by the device's policy.devices. */
  devices: deviceList,
  /** Supplementary groups of the process: names in the image's /etc/group, or numbers. */
  groupAdd: z._default(z.array(groupRef), []),
  stopSignal: z._default(z.string(), "SIGTERM"),
  stopTimeoutMs: millis(0, 10_000),
});
export type ServiceSpec = z.output<typeof serviceSpec>;

/** `agent`: a release version (as a bundle's RELEASE names it) and the index `fleetctl push-agent` pushed, by digest. */
export const agentTarget = z.object({
  version: z.string().check(z.regex(/^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/, "expected a release version such as 0.3.0")),
  image: z
    .string()
    .check(z.regex(/@sha256:[a-f0-9]{64}$/, "expected a reference pinned by digest (registry/repository@sha256:…)")),
});
export type AgentTarget = z.output<typeof agentTarget>;

const documentFields = z.object({
  apiVersion: z.literal("fleetlet/v1", { error: 'expected "fleetlet/v1"' }),
  deployment: z.string().check(z.minLength(1), z.maxLength(200)),
  generation: z.number().check(z.int(), z.nonnegative()),
  /** Container networks, each a bridge of its own; services join them by name. */
  networks: z._default(z.record(serviceName, networkSpec), {}),
  services: z.record(serviceName, serviceSpec),
  update: z._default(
    z.object({
      strategy: z._default(
        z.enum(["download-then-swap", "stop-then-download", "start-then-stop"]),
        "download-then-swap",
      ),
      healthyWithinMs: millis(0, 60_000),
      rollback: z._default(z.boolean(), true),
    }),
    { strategy: "download-then-swap", healthyWithinMs: 60_000, rollback: true },
  ),
  /** Read from group documents only: which share of the group takes this deployment, or rolls it back. */
  rollout: z._default(
    z.object({
      percent: z._default(z.number().check(z.minimum(0), z.maximum(100)), 100),
      rollback: z._default(z.boolean(), false),
    }),
    { percent: 100, rollback: false },
  ),
  /** Where the document is meant to go ("device/<id>" or "group/<name>"); fleetctl sets it, so a signed document cannot be replayed to another topic. */
  target: z.optional(z.string().check(z.regex(/^(device|group)\/[^/]+$/, 'expected "device/<id>" or "group/<name>"'))),
  /** The time after which a device refuses the document (RFC 3339); fleetctl sets it with --valid-for. */
  notAfter: z.optional(
    z.iso.datetime({ offset: true, error: "expected an RFC 3339 time such as 2026-01-31T12:00:00Z" }),
  ),
  /** The agent version the device should run, and the OCI artifact its bundle comes from (`fleetctl push-agent`). */
  agent: z.optional(agentTarget),
  signature: z.optional(z.string()),
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
export const desiredState = documentFields.check(
  z.superRefine((doc, ctx) => {
    for (const issue of checkServiceNetworks(doc)) ctx.addIssue({ code: "custom", input: doc, ...issue });
  }),
);
export type DesiredState = z.output<typeof desiredState>;
export type DesiredStateInput = z.input<typeof desiredState>;
