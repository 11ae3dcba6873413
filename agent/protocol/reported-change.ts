/**
 * What counts as a change of the reported document (docs/contract.md,
 * "Reported-state document"): the agent publishes the document only when
 * this key differs from the key of the document it published last. Left out
 * are the figures that change all the time without anything happening: `ts`,
 * `agent.uptimeSec`, and each service's `memoryBytes` and `cpuSeconds`. The
 * published document still carries them, as they stood at its publish; their
 * live values are on the local endpoint (`/v1/status`, `/metrics`).
 */

/** Members of the reported document, and of each of its services, whose changes alone publish nothing. */
export const VOLATILE_REPORTED = { top: ["ts"], agent: ["uptimeSec"], service: ["memoryBytes", "cpuSeconds"] } as const;

type Json = Record<string, unknown>;

function without(doc: unknown, keys: readonly string[]): unknown {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return doc;
  return Object.fromEntries(Object.entries(doc as Json).filter(([k]) => !keys.includes(k)));
}

/** The reported document reduced to what an operator would see change, as a string to compare. */
export function reportedChangeKey(doc: object): string {
  const d = without(doc, VOLATILE_REPORTED.top) as Json;
  const services = d.services as Json | undefined;
  const reduced = {
    ...d,
    ...(d.agent === undefined ? {} : { agent: without(d.agent, VOLATILE_REPORTED.agent) }),
    ...(services === undefined || services === null || typeof services !== "object"
      ? {}
      : {
          services: Object.fromEntries(
            Object.entries(services).map(([name, s]) => [name, without(s, VOLATILE_REPORTED.service)]),
          ),
        }),
  };
  return JSON.stringify(reduced);
}
