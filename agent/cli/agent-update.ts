/**
 * The agent's self-update (docs/contract.md, "Agent self-update"). When the
 * document it follows names another agent version in `agent`, and its
 * services have converged, the agent pulls its architecture's bundle (a pull
 * like any image's: resumable, verified, under the bandwidth cap, the blob in
 * blobs/), unpacks it beside itself in PREFIX/versions/<version>/ and checks
 * its MANIFEST.sha256, records the update as pending (PREFIX/agent-update),
 * points `previous` at itself and `current` at the new version, stops
 * watching (the containers keep running) and re-executes into the launcher:
 * same pid, so systemd's Type=notify and the unit hold.
 *
 * The new version, on trial, commits when it has adopted the containers, is
 * connected to the broker, reports the document's generation, and has stayed
 * up for agentUpdate.commitWithinMs; otherwise it reverts itself. A crash
 * loop or a hang is reverted by the launcher (deploy/launcher.sh). The
 * version it reverts to finds state=failed, reports `rolledBack` with
 * E_AGENT_UPDATE_FAILED, and does not try that version again for the document.
 */
import type { DesiredState } from "../../schemas/desired.js";
import { AGENT_BUNDLE_MEDIA } from "../../schemas/oci.js";
import { FleetError } from "../errors.js";
import type { Agent } from "../reconcile/agent.js";
import { unpackBundle } from "../store/bundle-unpack.js";
import {
  type AgentInstall,
  type AgentUpdateState,
  clearUpdateState,
  pointLink,
  pruneVersions,
  readUpdateState,
  writeUpdateState,
} from "../system/agent-install.js";
import type { CliContext } from "./context.js";

export interface AgentUpdaterDeps {
  ctx: CliContext;
  agent: Agent;
  /** Where this agent is installed; undefined when it does not run from a release layout (no self-update then). */
  install: AgentInstall | undefined;
  /** The document the agent follows. */
  desired: () => DesiredState | undefined;
  /** An `agentUpdate` event for the events topic. */
  event: (e: { type: "agentUpdate"; stage: string; [k: string]: unknown }) => void;
  /** The reported state changed (the agent's phase or lastError). */
  changed: () => void;
  /** Whether the broker is connected now. */
  connected: () => boolean;
  /** Stop watching and re-execute through PREFIX/current/bin/fleetlet. */
  handOver: (why: string) => void;
  log: (line: string) => void;
}

export class AgentUpdater {
  private failed: AgentUpdateState | undefined;
  private busy = false;
  /** The version, deployment and generation whose download or unpack failed: not tried again for that document. */
  private refused: string | undefined;
  private trial: NodeJS.Timeout | undefined;

  constructor(private readonly deps: AgentUpdaterDeps) {}

  get install(): AgentInstall | undefined {
    return this.deps.install;
  }

  /** Called once the containers are adopted and the broker tried: reads what an update left behind. */
  start(commitWithinMs: number): void {
    const { install } = this.deps;
    if (!install) return;
    const state = readUpdateState(install.prefix);
    if (state?.state === "failed") {
      this.failed = state;
      this.deps.event({ type: "agentUpdate", stage: "reverted", from: state.to, to: state.from, reason: state.reason });
    } else if (state?.state === "pending" && state.to === install.version) {
      const at = new Date().toISOString();
      this.deps.log(`agent update: ${state.to} on trial (start ${state.attempts}); containers adopted at ${at}`);
      this.trial = setTimeout(() => this.judge(state), commitWithinMs);
    } else if (state?.state === "pending") {
      // Cut off before the switch (current still names this version): it is tried again from the start.
      this.deps.log(`agent update: ${state.to} was not switched in; this is ${install.version}`);
      clearUpdateState(install.prefix);
    }
  }

  stop(): void {
    clearTimeout(this.trial);
  }

  /** The trial's end: commit, or revert to the version before. */
  private judge(state: AgentUpdateState): void {
    this.trial = undefined;
    const reported = this.deps.agent.reported().generation;
    const missing = !this.deps.connected()
      ? "it was not connected to the broker"
      : reported === null || reported < state.generation
        ? `it reported generation ${reported}, not ${state.generation} or newer`
        : undefined;
    const { prefix } = this.deps.install!;
    if (missing === undefined) {
      // Pruned first: once the state is gone the update is done, and the test (or an operator) may look.
      const removed = pruneVersions(prefix, [state.to, state.from]);
      clearUpdateState(prefix);
      this.deps.log(`agent update: ${state.to} committed${removed.length ? `; removed ${removed.join(", ")}` : ""}`);
      this.deps.event({ type: "agentUpdate", stage: "committed", from: state.from, to: state.to });
      this.settled(); // a newer document may name another version already
      return;
    }
    const reason = `${missing} within agentUpdate.commitWithinMs`;
    writeUpdateState(prefix, { ...state, state: "failed", reason });
    pointLink(prefix, "current", state.from);
    this.deps.handOver(`agent update: ${state.to} reverted to ${state.from}: ${reason}`);
  }

  /** An apply settled: report a failed update of this document, or start one the document asks for. */
  settled(): void {
    const { install, agent } = this.deps;
    const doc = this.deps.desired();
    if (!install || !doc?.agent || this.busy || this.trial) return;
    const f = this.failed;
    if (f && f.to === doc.agent.version && f.deployment === doc.deployment && f.generation === doc.generation) {
      agent.phase = "rolledBack";
      agent.lastError = {
        code: "E_AGENT_UPDATE_FAILED",
        message: `agent ${f.to} was reverted to ${f.from}: ${f.reason ?? "it did not commit"}; not tried again for generation ${f.generation}`,
      };
      this.deps.changed();
      return;
    }
    if (doc.agent.version === install.version || agent.phase !== "converged") return;
    const attempt = `${doc.agent.version}@${doc.deployment}#${doc.generation}`;
    if (this.refused === attempt) return;
    this.busy = true;
    this.update(doc, install).catch((err: unknown) => {
      this.busy = false;
      this.refused = attempt; // a bad bundle is not fetched again at every later change, only for a newer document
      const e = err instanceof FleetError ? err : new FleetError("E_AGENT_UPDATE_FAILED", String(err));
      this.deps.log(`agent update to ${doc.agent?.version} failed: ${e.message} [${e.code}]`);
      this.deps.event({
        type: "agentUpdate",
        stage: "failed",
        to: doc.agent?.version,
        code: e.code,
        message: e.message,
      });
      agent.lastError = {
        code: "E_AGENT_UPDATE_FAILED",
        message: `agent update to ${doc.agent?.version}: ${e.message}`,
      };
      this.deps.changed();
    });
  }

  private async update(doc: DesiredState, install: AgentInstall): Promise<void> {
    const target = doc.agent!;
    this.deps.log(`agent update: ${install.version} → ${target.version} from ${target.image}`);
    this.deps.event({ type: "agentUpdate", stage: "downloading", from: install.version, to: target.version });
    const record = await this.deps.ctx.pull(target.image, { unpack: false, quiet: true });
    const layer = record.layers[0];
    if (record.layers.length !== 1 || layer?.mediaType !== AGENT_BUNDLE_MEDIA)
      throw new FleetError(
        "E_AGENT_UPDATE_FAILED",
        `${target.image}: not an agent bundle (expected one layer of ${AGENT_BUNDLE_MEDIA}; fleetctl push-agent pushes them)`,
      );
    const store = await this.deps.ctx.store();
    await unpackBundle(
      () => store.content.createReadStream(layer.digest),
      `${install.prefix}/versions`,
      { version: target.version, arch: process.arch },
      target.image,
    );
    const commitWithinSec = Math.ceil(this.deps.ctx.config.agentUpdate.commitWithinMs / 1000);
    const pending: AgentUpdateState = {
      state: "pending",
      from: install.version,
      to: target.version,
      deployment: doc.deployment,
      generation: doc.generation,
      commitWithinSec,
      attempts: 0,
    };
    writeUpdateState(install.prefix, pending);
    pointLink(install.prefix, "previous", install.version);
    pointLink(install.prefix, "current", target.version);
    this.deps.event({ type: "agentUpdate", stage: "switching", from: install.version, to: target.version });
    this.deps.handOver(`agent update: handing over to ${target.version}`);
  }
}
