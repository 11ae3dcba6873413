/**
 * What the device records in db.json when it takes a document from a topic:
 * the topic's generation (each topic counts its own) and, for a document it
 * is about to apply, the document itself, where it came from, and what the
 * device could tell of its freshness (reported as `lastAccepted`).
 */
import type { DbData } from "../../schemas/db.js";
import type { DesiredState } from "../../schemas/desired.js";

/** The highest generation accepted from `key` ("device", "group:<name>"); null when none was. */
export function generationSeen(data: DbData, key: string): number | null {
  const { generations } = data;
  // A db.json from before generations were counted per topic holds one for all.
  return generations[key] ?? (Object.keys(generations).length ? null : data.generation);
}

export interface Acceptance {
  /** The document as it came from the topic. */
  doc: DesiredState;
  key: string;
  /** What will run: the document, or for an operator's rollback the deployment restored; none when nothing is applied. */
  desired?: DesiredState;
  signed: boolean;
  previousGeneration: number | null;
}

/** Applies an acceptance to db.json's data (inside StateDb.update). */
export function recordAcceptance(d: DbData, a: Acceptance, at: Date): void {
  d.generations[a.key] = a.doc.generation;
  if (!a.desired) return;
  d.desired = a.desired;
  d.generation = a.doc.generation;
  d.desiredSource = a.key;
  d.lastAccepted = {
    deployment: a.doc.deployment,
    generation: a.doc.generation,
    source: a.key,
    at: at.toISOString(),
    signed: a.signed,
    notAfter: a.doc.notAfter ?? null,
    previousGeneration: a.previousGeneration,
  };
}
