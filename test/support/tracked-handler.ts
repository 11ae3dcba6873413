/**
 * The daemon's desired-topic handler (reconcile/desired-sources.ts) over an
 * Agent, keeping every submit it starts so a test can wait for them all.
 */
import type { Agent } from "../../agent/reconcile/agent.js";
import { desiredHandler } from "../../agent/reconcile/desired-sources.js";

export function trackedDesiredHandler(agent: Agent, groups: string[], prefix = "fleet") {
  const pending: Promise<unknown>[] = [];
  const handler = desiredHandler(
    {
      submit: (...args) => {
        const p = agent.submit(...args);
        pending.push(p);
        return p;
      },
      reject: (err) => agent.reject(err),
      admit: (...args) => agent.admit(...args),
      requiresSignatures: agent.requiresSignatures,
    },
    groups,
    prefix,
  );
  return { handler, pending };
}
