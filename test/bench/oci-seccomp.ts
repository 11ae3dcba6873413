/**
 * fleetlet's default seccomp policy as an OCI `linux.seccomp` object, for
 * the benchmarks' crun and runc bundles, so that the runtimes compared
 * filter the same calls. The generator (native/seccomp/generator.c) writes
 * it beside the shim for each target. Its masks use all 64 bits, past what
 * a JavaScript number holds exactly, so its text is spliced into
 * config.json rather than parsed. One difference remains: a call with
 * argument rules that match nothing (clone with a namespace flag, say)
 * gets ENOSYS from the OCI runtimes, where fleetlet's program says EPERM.
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { loadNative } from "../../agent/system/native.js";

const TARGETS: Partial<Record<NodeJS.Architecture, string>> = { x64: "x86_64", arm64: "aarch64", arm: "arm" };
const PLACEHOLDER = "@fleetlet-seccomp-policy@";

/** The text of config.json for an OCI spec, with fleetlet's policy as linux.seccomp. */
export function specWithSeccomp(spec: { linux: Record<string, unknown> }, indent?: number): string {
  const target = TARGETS[process.arch];
  if (!target) throw new Error(`fleetlet has no seccomp policy for ${process.arch}`);
  const policy = readFileSync(join(dirname(loadNative().shimPath), `seccomp-oci-${target}.json`), "utf8");
  spec.linux.seccomp = PLACEHOLDER;
  return JSON.stringify(spec, null, indent).replace(JSON.stringify(PLACEHOLDER), policy.trim());
}
