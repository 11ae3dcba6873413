/**
 * What the reconciler needs from a container runtime, and nothing more: the
 * calls Agent and ServiceSupervisor make. The real Runtime (runtime/runtime.ts)
 * satisfies it structurally (the daemon passes one, so tsc checks it); the
 * fleet simulation passes a driver that runs no containers
 * (test/support/sim/simulated-runtime.ts) and the fast agent tests.
 */
import type {
  CgroupMode,
  ContainerInfo,
  ContainerSpecInput,
  ContainerStats,
  ExitRecord,
} from "../../schemas/container.js";
import type { DevicePresence } from "../../schemas/device.js";
import type { NetworkDriver } from "./device-networks.js";

export interface ContainerDriver {
  /** Container networks (bridges, published ports); a driver without them runs services on no network. */
  readonly network?: NetworkDriver;
  /** Reported as `agent.cgroupMode`. */
  readonly cgroups: { readonly mode: CgroupMode };
  /** Validates the spec (schemas/container) and records the container; throws E_CONFLICT for a taken name. */
  create(spec: ContainerSpecInput): ContainerInfo;
  start(id: string): Promise<ContainerInfo>;
  /** Throws E_NOT_FOUND for an unknown id. */
  inspect(id: string): ContainerInfo;
  list(): ContainerInfo[];
  /** Resolves with the exit record once the container has exited; rejects when `signal` aborts. */
  wait(id: string, signal?: AbortSignal): Promise<ExitRecord>;
  /** Runs a command inside the running container (healthchecks). */
  exec(
    id: string,
    command: string[],
    opts?: { timeoutMs?: number; signal?: AbortSignal },
  ): Promise<{ exitCode: number; output: string }>;
  /** The stop signal, then SIGKILL after the timeout; E_CONFLICT when never started. */
  stop(id: string, opts?: { timeoutMs?: number; signal?: string }): Promise<ExitRecord>;
  delete(id: string, opts?: { force?: boolean }): Promise<void>;
  stats(id: string): ContainerStats;
  logs(id: string, opts?: { tail?: number }): string;
  /** The host devices of a container that are absent now, as its spec names them. */
  absentDevices?(id: string): string[];
  /** Brings a running container's device nodes and cgroup rules in line with the host's devices; whether each is there. */
  followDevices?(id: string): Promise<DevicePresence[]>;
}
