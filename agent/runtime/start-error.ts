/** A start the shim refused, as a FleetError: the shim's exit status says which kind. */
import { FleetError } from "../errors.js";

export function startError(id: string, err: unknown): FleetError {
  const e = err as Error & { exitCode?: number };
  const exitCode = e.exitCode ?? 125;
  const code = exitCode === 127 ? "E_COMMAND_NOT_FOUND" : exitCode === 126 ? "E_NOT_EXECUTABLE" : "E_RUNTIME";
  return new FleetError(code, `container ${id}: ${e.message}`, { exitCode, cause: err });
}
