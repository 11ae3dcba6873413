/**
 * The device's policy over desired-state documents (the config's `policy`
 * section, schemas/policy.ts): which registries a service's image may come
 * from, whether it may use the host's network, and the limits every service
 * runs under. Checked once, here, before a document is accepted: a refused
 * document stops nothing and pulls nothing. Pure: table-tested in
 * test/unit/policy.test.ts.
 */
import type { DeviceConfig } from "../../schemas/config.js";
import type { DesiredState, ServiceSpec } from "../../schemas/desired.js";
import { formatBytes } from "../../schemas/quantity.js";
import { FleetError } from "../errors.js";
import { parseReference } from "../registry/reference.js";

/** The policy with every default worked out. */
export interface DevicePolicy {
  /** Registry hosts (`host[:port]`, lower case) a service's image may come from. */
  registries: string[];
  hostNetwork: boolean;
  /** Globs of host device paths a service may be given (services.*.devices[].path). */
  devices: string[];
  /** Whether an unsigned document is refused. */
  requireSigned: boolean;
  defaults: { memory: number; pids: number };
  max: { memory: number; pids: number };
}

/** The config's policy with its derived defaults: the registries it has credentials for; signatures whenever it trusts a key. */
export function resolvePolicy(config: Pick<DeviceConfig, "policy" | "registries" | "trustedKeys">): DevicePolicy {
  const { policy } = config;
  return {
    registries: (policy.registries ?? Object.keys(config.registries)).map((r) => r.toLowerCase()),
    hostNetwork: policy.hostNetwork,
    devices: policy.devices,
    requireSigned: policy.requireSigned ?? config.trustedKeys.length > 0,
    defaults: { ...policy.defaults },
    max: { ...policy.max },
  };
}

/** One refusal: the document's field and why. */
interface Violation {
  code: "E_POLICY" | "E_INVALID_DESIRED";
  path: string;
  reason: string;
}

function imageViolation(path: string, image: string, policy: DevicePolicy): Violation | undefined {
  let registry: string;
  try {
    registry = parseReference(image, path).registry.toLowerCase();
  } catch (err) {
    return { code: "E_INVALID_DESIRED", path, reason: (err as Error).message.replace(`${path} `, "") };
  }
  if (policy.registries.includes(registry)) return undefined;
  const allowed = policy.registries.length ? policy.registries.join(", ") : "none";
  return {
    code: "E_POLICY",
    path,
    reason: `registry ${registry} is not allowed by this device's policy (policy.registries: ${allowed})`,
  };
}

function serviceViolations(name: string, spec: ServiceSpec, policy: DevicePolicy): Violation[] {
  const out: Violation[] = [];
  const image = imageViolation(`services.${name}.image`, spec.image, policy);
  if (image) out.push(image);
  if (spec.network === "host" && !policy.hostNetwork)
    out.push({
      code: "E_POLICY",
      path: `services.${name}.network`,
      reason: '"host" is not allowed by this device\'s policy (policy.hostNetwork is false)',
    });
  spec.devices.forEach((d, i) => {
    if (!deviceAllowed(d.path, policy.devices))
      out.push({
        code: "E_POLICY",
        path: `services.${name}.devices[${i}].path`,
        reason: `${d.path} is not allowed by this device's policy (policy.devices: ${policy.devices.length ? policy.devices.join(", ") : "none"})`,
      });
  });
  const { memory, pids } = spec.resources;
  if (memory !== undefined && memory > policy.max.memory)
    out.push({
      code: "E_POLICY",
      path: `services.${name}.resources.memory`,
      reason: `${formatBytes(memory)} is above this device's maximum of ${formatBytes(policy.max.memory)} (policy.max.memory)`,
    });
  if (pids !== undefined && pids > policy.max.pids)
    out.push({
      code: "E_POLICY",
      path: `services.${name}.resources.pids`,
      reason: `${pids} is above this device's maximum of ${policy.max.pids} (policy.max.pids)`,
    });
  return out;
}

/**
 * Checks a validated document against the policy and returns it as it was;
 * throws E_POLICY (or E_INVALID_DESIRED for an image reference that does
 * not parse) naming every field at fault. The policy's default limits are
 * not written into the document: `withDefaultLimits` applies them when a
 * container is made, so they never change a service's spec hash (an agent
 * upgrade or a new default replaces no running container).
 */
export function enforcePolicy(doc: DesiredState, policy: DevicePolicy, source: string): DesiredState {
  const violations = Object.entries(doc.services).flatMap(([name, spec]) => serviceViolations(name, spec, policy));
  // The agent's own bundle comes from an allowed registry, like any service's image.
  const agent = doc.agent && imageViolation("agent.image", doc.agent.image, policy);
  if (agent) violations.push(agent);
  if (violations.length) {
    const code = violations.some((v) => v.code === "E_POLICY") ? "E_POLICY" : "E_INVALID_DESIRED";
    throw new FleetError(code, `${source}: ${violations.map((v) => `${v.path}: ${v.reason}`).join("; ")}`);
  }
  return doc;
}

/** A service's spec with the policy's default memory and pids limits where it sets none. */
export function withDefaultLimits(spec: ServiceSpec, defaults: DevicePolicy["defaults"]): ServiceSpec {
  const { memory, pids } = spec.resources;
  return { ...spec, resources: { ...spec.resources, memory: memory ?? defaults.memory, pids: pids ?? defaults.pids } };
}

/**
 * Whether the policy's `devices` globs allow a host device path: `*` and `?`
 * match within one path component, `[…]` is a character class. The path
 * is the one the document names (a symlink such as /dev/serial/by-id/… is
 * judged by that name, since that is what the operator asked for).
 */
export function deviceAllowed(path: string, patterns: string[]): boolean {
  if (path.split("/").includes("..")) return false;
  return patterns.some((pattern) => globRegExp(pattern).test(path));
}

function globRegExp(pattern: string): RegExp {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else if (c === "[") {
      const end = pattern.indexOf("]", i + 1);
      // The schema refuses an unclosed class; here it simply matches a literal "[".
      if (end < 0) re += "\\[";
      else {
        re += `[${pattern.slice(i + 1, end).replace(/[\\^]/g, "\\$&")}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\/-]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}
