/**
 * A command run inside a running container (healthchecks) through the
 * shim's exec mode: it joins the init's namespaces and the container's
 * cgroups, and takes the container's capabilities, environment, user and
 * seccomp; it is killed at the timeout, and its output is kept to about 4 KiB.
 * The shim is started with an empty environment: the agent's own (which may
 * hold FLEETLET_* secrets) never enters the container, even for the moment
 * before the command's exec.
 */
import { spawn } from "node:child_process";
import type { ContainerSpec } from "../../schemas/container.js";
import { FleetError } from "../errors.js";
import { capabilitySet } from "./capabilities.js";
import { withDefaults } from "./proc-defaults.js";
import { signalNumber } from "./signals.js";

export interface ExecTarget {
  /** The shim binary, whose exec mode runs the command. */
  shimPath: string;
  id: string;
  spec: ContainerSpec;
  /** The container's init, named by pid and start time. */
  init: { pid: number; startTime: string };
  /** The container's cgroup directories. */
  cgroupDirs: Iterable<string>;
  /** List /proc/self/fd even where close_range can mark descriptors (tests). */
  fdScan?: boolean;
}

export interface ExecResult {
  exitCode: number;
  output: string;
}

/** The shim's arguments for running `command` in the target. */
function execArgs(target: ExecTarget, command: string[]): string[] {
  const { id, spec, init } = target;
  const args = ["exec", String(init.pid), init.startTime];
  for (const dir of new Set(target.cgroupDirs)) args.push("--cgroup", dir);
  for (const cap of capabilitySet(spec.capAdd, spec.capDrop)) args.push("--cap", String(cap));
  for (const e of withDefaults(spec, spec.hostname ?? id)) args.push("--env", e);
  args.push("--uid", String(spec.user.uid), "--gid", String(spec.user.gid));
  if (spec.seccomp === "unconfined") args.push("--no-seccomp");
  if (target.fdScan) args.push("--fd-scan");
  args.push("--", ...command);
  return args;
}

export function execInContainer(
  target: ExecTarget,
  command: string[],
  opts: { timeoutMs?: number; signal?: AbortSignal },
): Promise<ExecResult> {
  const args = execArgs(target, command);
  return new Promise((resolve, reject) => {
    const child = spawn(target.shimPath, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: {},
      timeout: opts.timeoutMs ?? 10_000,
      killSignal: "SIGKILL",
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    let output = "";
    const collect = (d: Buffer) => {
      if (output.length < 4096) output += d.toString("utf8");
    };
    child.stdout.on("data", collect);
    child.stderr.on("data", collect);
    child.on("error", (err) =>
      reject(new FleetError("E_RUNTIME", `exec in ${target.id}: ${err.message}`, { cause: err })),
    );
    child.on("close", (code, sig) => resolve({ exitCode: code ?? 128 + (sig ? signalNumber(sig) : 9), output }));
  });
}
