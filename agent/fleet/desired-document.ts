/**
 * The operator's side of a desired-state document: read from a file, given a
 * generation newer than what the target topic holds, validated with the same
 * schema the agents use, and signed. What is published is the document as the
 * operator wrote it plus those fields, so the bytes stay small on metered links.
 */
import type { KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { type DesiredState, desiredState } from "../../schemas/desired.js";
import { formatIssues } from "../../schemas/format-issues.js";
import { FleetError } from "../errors.js";
import { signDocument } from "../protocol/signature.js";
import type { FleetClient } from "./fleet-client.js";

export type RawDocument = Record<string, unknown>;

export function readDocumentFile(file: string): RawDocument {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new FleetError(
      "E_NOT_FOUND",
      `${file}: ${(err as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (err as Error).message}`,
      { exitCode: 2 },
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new FleetError("E_INVALID_DESIRED", `${file}: not valid JSON: ${(err as Error).message}`, { exitCode: 2 });
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new FleetError("E_INVALID_DESIRED", `${file}: expected a JSON object (a desired-state document)`, {
      exitCode: 2,
    });
  return raw as RawDocument;
}

/** The retained document on `topic`, if any (unparsable ones count as absent, with a warning). */
export async function retainedDocument(client: FleetClient, topic: string): Promise<RawDocument | undefined> {
  const payload = await client.retained(topic);
  if (!payload) return undefined;
  try {
    return JSON.parse(payload.toString()) as RawDocument;
  } catch (err) {
    process.stderr.write(
      `fleetctl: warning: the retained message on ${topic} is not JSON (${(err as Error).message}); replacing it\n`,
    );
    return undefined;
  }
}

/**
 * The generation to publish: the file's own, which must be newer than the
 * retained one, or (when the file has none) one past the retained one.
 */
export function pickGeneration(raw: RawDocument, retained: RawDocument | undefined, topic: string): number {
  const previous = typeof retained?.generation === "number" ? retained.generation : undefined;
  if (raw.generation === undefined) return (previous ?? 0) + 1;
  if (typeof raw.generation !== "number") return raw.generation as number; // validation names the field
  if (previous !== undefined && raw.generation <= previous) {
    throw new FleetError(
      "E_STALE_GENERATION",
      `generation: ${raw.generation} is not newer than ${previous}, which ${topic} already holds; devices would ignore it (leave "generation" out and fleetctl picks ${previous + 1})`,
      { exitCode: 2 },
    );
  }
  return raw.generation;
}

/** What fleetctl sets in a document before it signs it. */
export interface DocumentFields {
  generation: number;
  target: string;
  rollout?: { percent: number; rollback?: boolean };
  /** `--valid-for`: notAfter becomes now plus this (replacing the file's own). */
  validForMs?: number;
}

/**
 * Sets the fields, validates, signs; returns the payload to publish and the
 * parsed document. A document already past its notAfter is refused: every
 * device would refuse it (E_EXPIRED).
 */
export function finishDocument(
  raw: RawDocument,
  fields: DocumentFields,
  opts: { file: string; key?: KeyObject; now?: number },
): { payload: string; doc: DesiredState } {
  const { signature: _old, ...rest } = raw;
  const now = opts.now ?? Date.now();
  // The target is signed with the rest, so the document cannot be replayed to another device or group.
  let out: RawDocument = {
    ...rest,
    generation: fields.generation,
    target: fields.target,
    ...(fields.rollout ? { rollout: fields.rollout } : {}),
    ...(fields.validForMs !== undefined ? { notAfter: new Date(now + fields.validForMs).toISOString() } : {}),
  };
  const parsed = desiredState.safeParse(out);
  if (!parsed.success)
    throw new FleetError("E_INVALID_DESIRED", `${opts.file}: ${formatIssues(parsed.error)}`, { exitCode: 2 });
  const { notAfter } = parsed.data;
  if (notAfter !== undefined && Date.parse(notAfter) < now)
    throw new FleetError(
      "E_EXPIRED",
      `${opts.file}: notAfter: ${notAfter} has passed, so every device would refuse the document; give --valid-for DURATION for a fresh one`,
      { exitCode: 2 },
    );
  if (opts.key) out = signDocument(out, opts.key);
  return { payload: JSON.stringify(out), doc: parsed.data };
}
