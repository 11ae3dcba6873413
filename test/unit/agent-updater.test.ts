/**
 * The agent's side of a self-update, on a fake install (PREFIX with two
 * versions and the state file) and a stand-in agent: what a start finds in
 * PREFIX/agent-update, and how a version on trial is judged. The pull, the
 * hand-over and the real processes are in test/integration/agent-update.test.ts.
 */
import { existsSync, mkdirSync, mkdtempSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AgentUpdater } from "../../agent/cli/agent-update.js";
import type { CliContext } from "../../agent/cli/context.js";
import type { Agent } from "../../agent/reconcile/agent.js";
import { pointLink, readUpdateState, writeUpdateState } from "../../agent/system/agent-install.js";
import type { DesiredState } from "../../schemas/desired.js";
import { waitFor } from "../support/wait-for.js";

const work = mkdtempSync(join(tmpdir(), "fleetlet-agent-updater-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let n = 0;

function fakePrefix(current: string): string {
  const prefix = join(work, `p${++n}`);
  for (const v of ["1.0.0", "2.0.0"]) mkdirSync(join(prefix, "versions", v), { recursive: true });
  pointLink(prefix, "current", current);
  return prefix;
}

const doc = (agentVersion: string, generation = 3) =>
  ({ deployment: "d", generation, agent: { version: agentVersion, image: "r/a@sha256:x" } }) as unknown as DesiredState;

function updater(prefix: string, version: string, opts: { desired?: DesiredState; connected?: boolean } = {}) {
  const agent = { phase: "converged", lastError: null, reported: () => ({ generation: 3 }) };
  const seen = { events: [] as { stage: string }[], handOvers: [] as string[], pulls: 0 };
  const ctx = {
    pull: () => {
      seen.pulls++;
      return Promise.reject(new Error("no registry here"));
    },
  };
  const u = new AgentUpdater({
    ctx: ctx as unknown as CliContext,
    agent: agent as unknown as Agent,
    install: { prefix, version },
    desired: () => opts.desired,
    connected: () => opts.connected ?? true,
    event: (e) => seen.events.push(e),
    changed: () => {},
    handOver: (why) => seen.handOvers.push(why),
    log: () => {},
  });
  return { u, agent, seen };
}

const pending = {
  state: "pending",
  from: "1.0.0",
  to: "2.0.0",
  deployment: "d",
  generation: 3,
  commitWithinSec: 1,
} as const;

describe("AgentUpdater", () => {
  it("drops a pending update that never switched in (current still names this version), to start it over", () => {
    const prefix = fakePrefix("1.0.0");
    writeUpdateState(prefix, { ...pending, attempts: 0 });
    updater(prefix, "1.0.0").u.start(60_000);
    expect(existsSync(join(prefix, "agent-update"))).toBe(false);
  });

  it("reports a failed update of this document as rolledBack and does not try that version again", () => {
    const prefix = fakePrefix("1.0.0");
    writeUpdateState(prefix, { ...pending, state: "failed", attempts: 3, reason: "it was started 3 times" });
    const { u, agent, seen } = updater(prefix, "1.0.0", { desired: doc("2.0.0") });
    u.start(60_000);
    u.settled();
    expect(agent.phase).toBe("rolledBack");
    expect(agent.lastError).toEqual({
      code: "E_AGENT_UPDATE_FAILED",
      message: "agent 2.0.0 was reverted to 1.0.0: it was started 3 times; not tried again for generation 3",
    });
    expect(seen.events).toEqual([expect.objectContaining({ stage: "reverted", from: "2.0.0", to: "1.0.0" })]);
    expect(seen.pulls).toBe(0);
  });

  it("tries the same version again for a newer document", async () => {
    const prefix = fakePrefix("1.0.0");
    writeUpdateState(prefix, { ...pending, state: "failed", attempts: 3, reason: "crash loop" });
    const { u, agent, seen } = updater(prefix, "1.0.0", { desired: doc("2.0.0", 4) });
    u.start(60_000);
    u.settled();
    await waitFor("the failed pull", () => agent.lastError !== null, { timeoutMs: 10_000 });
    expect(seen.pulls).toBe(1);
    expect(agent.lastError).toMatchObject({ code: "E_AGENT_UPDATE_FAILED", message: /no registry here/ });
  });

  it("commits a version on trial that is connected and reports the generation, at the end of its window", async () => {
    const prefix = fakePrefix("2.0.0");
    writeUpdateState(prefix, { ...pending, attempts: 1 });
    const { u, seen } = updater(prefix, "2.0.0", { desired: doc("2.0.0") });
    u.start(50);
    expect(readUpdateState(prefix)?.state).toBe("pending");
    await waitFor("the commit", () => !existsSync(join(prefix, "agent-update")), { timeoutMs: 10_000 });
    expect(seen.events).toContainEqual(expect.objectContaining({ stage: "committed" }));
    expect(seen.handOvers).toEqual([]);
  });

  it("reverts a version on trial that is not connected at the end of its window, and hands over to the old one", async () => {
    const prefix = fakePrefix("2.0.0");
    writeUpdateState(prefix, { ...pending, attempts: 1 });
    const { u, seen } = updater(prefix, "2.0.0", { desired: doc("2.0.0"), connected: false });
    u.start(50);
    await waitFor("the revert", () => seen.handOvers.length > 0, { timeoutMs: 10_000 });
    expect(readlinkSync(join(prefix, "current"))).toBe("versions/1.0.0");
    expect(readUpdateState(prefix)).toMatchObject({
      state: "failed",
      reason: "it was not connected to the broker within agentUpdate.commitWithinMs",
    });
    expect(seen.handOvers).toEqual([expect.stringContaining("2.0.0 reverted to 1.0.0")]);
  });
});
