/**
 * What the status endpoint answers: a status, a content type and a body,
 * and the reply for an error: the endpoint's own refusals (ApiError) with
 * their HTTP status and headers, the agent's FleetErrors mapped by code, and
 * anything else as a 500 that names the endpoint.
 */
import { type ErrorCode, FleetError } from "../errors.js";

export interface Reply {
  status: number;
  type: string;
  body: string;
  headers?: Record<string, string>;
}

/** Codes of refusals that come from the endpoint itself rather than from the agent. */
type ApiCode = ErrorCode;

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiCode,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export const json = (status: number, value: unknown): Reply => ({
  status,
  type: "application/json",
  body: `${JSON.stringify(value)}\n`,
});
export const text = (body: string, type = "text/plain; charset=utf-8"): Reply => ({ status: 200, type, body });

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  E_NOT_FOUND: 404,
  E_INVALID_ARGUMENT: 400,
  E_CONFLICT: 409,
  E_CONTAINER_RUNNING: 409,
};

export function errorReply(err: unknown): Reply {
  if (err instanceof ApiError)
    return { ...json(err.status, { code: err.code, message: err.message }), headers: err.headers };
  if (err instanceof FleetError) return json(HTTP_STATUS[err.code] ?? 500, err.toJSON());
  const message = err instanceof Error ? err.message : String(err);
  return json(500, { code: "E_INTERNAL", message: `status endpoint: ${message}` });
}
