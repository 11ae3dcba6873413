/**
 * The one error type of fleetlet: a stable machine code (the same in the CLI's
 * output, in `reported.lastError` and on the events topic) and a sentence for
 * humans that names the thing involved.
 */
import { constants as osConstants } from "node:os";

export type ErrorCode =
  | "E_INVALID_ARGUMENT"
  | "E_INVALID_CONFIG"
  | "E_NOT_FOUND"
  | "E_CONFLICT"
  | "E_CONTAINER_RUNNING"
  | "E_RUNTIME"
  | "E_NOT_EXECUTABLE"
  | "E_COMMAND_NOT_FOUND"
  | "E_CGROUP"
  | "E_DEVICE"
  | "E_DEVICE_ABSENT"
  | "E_OOM_KILLED"
  | "E_NOT_ROOT"
  | "E_DIGEST_MISMATCH"
  | "E_UNSAFE_LAYER"
  | "E_UNSAFE_IMAGE"
  | "E_LAYER_LIMIT"
  | "E_UNSUPPORTED"
  | "E_REGISTRY"
  | "E_REGISTRY_AUTH"
  | "E_REGISTRY_TLS"
  | "E_REGISTRY_UNREACHABLE"
  | "E_MANIFEST_UNKNOWN"
  | "E_NO_PLATFORM"
  | "E_NO_SPACE"
  | "E_STORE_IO"
  | "E_ABORTED"
  | "E_IMAGE_NOT_FOUND"
  | "E_IMAGE_IN_USE"
  | "E_INVALID_DESIRED"
  | "E_UNHEALTHY"
  | "E_BAD_SIGNATURE"
  | "E_EXPIRED"
  | "E_POLICY"
  | "E_ROLLED_BACK"
  | "E_NO_ROLLBACK_TARGET"
  | "E_STALE_GENERATION"
  | "E_ROLLOUT_HALTED"
  | "E_EMPTY_GROUP"
  | "E_BROKER"
  | "E_TIMEOUT"
  | "E_UNAUTHORIZED"
  | "E_CORRUPT_STATE"
  | "E_FORBIDDEN"
  | "E_METHOD_NOT_ALLOWED"
  | "E_HOST_NOT_ALLOWED"
  | "E_API_UNAVAILABLE"
  | "E_AGENT_UPDATE_FAILED"
  | "E_NETWORK_CONFLICT"
  | "E_PORT_IN_USE"
  /** A pull worker ended before it said anything: it could not be started (cli/pull-process.ts). */
  | "E_PULL_WORKER"
  | "E_INTERNAL";

export class FleetError extends Error {
  readonly code: ErrorCode;
  /** The process exit status a CLI should use for this error. */
  readonly exitCode: number;

  constructor(code: ErrorCode, message: string, options: { exitCode?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "FleetError";
    this.code = code;
    this.exitCode = options.exitCode ?? 1;
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

/**
 * The errno name of a system call's error ("ENOSPC"): Node's fs errors carry
 * it as `code`, the native core's as a positive `errno` number. Undefined for
 * anything else.
 */
export function errnoName(err: unknown): string | undefined {
  if (!(err instanceof Error)) return undefined;
  const e = err as NodeJS.ErrnoException;
  if (typeof e.code === "string" && /^E[A-Z0-9]+$/.test(e.code)) return e.code;
  if (typeof e.errno !== "number") return undefined;
  const n = Math.abs(e.errno);
  return Object.entries(osConstants.errno).find(([, v]) => v === n)?.[0];
}

export function isErrno(err: unknown, code: string): err is NodeJS.ErrnoException {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}
