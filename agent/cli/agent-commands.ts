/** `fleetlet apply FILE`: the agent's reconcile loop once, locally, with no broker. */
import { readFileSync } from "node:fs";
import { FleetError } from "../errors.js";
import { publicKeyFromBase64 } from "../protocol/signature.js";
import { Agent } from "../reconcile/agent.js";
import { resolvePolicy } from "../reconcile/policy.js";
import { DeviceWatch } from "../runtime/device-watch.js";
import { loadNative } from "../system/native.js";
import { MemoryReclaimer } from "../system/process-memory.js";
import type { ParsedArgs } from "./args.js";
import type { Command } from "./command-line.js";
import type { CliContext } from "./context.js";
import { formatTable } from "./output.js";
import { fleetletVersion } from "./version.js";

export async function createAgent(
  ctx: CliContext,
  onEvent?: (e: { type: string }) => void,
  onChange?: (settled: boolean) => void,
): Promise<Agent> {
  const store = await ctx.store();
  const { throttleProgress } = await import("../registry/pull-progress.js");
  let agent: Agent | undefined;
  // Each burst of work is followed, once quiet, by giving its memory back.
  const reclaimer = new MemoryReclaimer(loadNative().core);
  // Pull progress goes out as events in percent, at most one a second per layer; warnings as they come.
  const progress = throttleProgress((e) => {
    if (e.type === "progress")
      onEvent?.({
        type: "pull.progress",
        layer: e.layer,
        percent: Math.floor((100 * e.done) / Math.max(1, e.total)),
      } as { type: string });
    else if (e.type === "warning")
      onEvent?.({ type: "pull.warning", layer: e.layer, message: e.message } as { type: string });
    else if (e.type === "done" && agent) agent.metrics.pullBytesTotal += e.fetchedBytes;
  }, 1000);
  agent = new Agent({
    deviceId: ctx.config.deviceId ?? "local",
    groups: ctx.config.groups,
    trustedKeys: ctx.config.trustedKeys.map((k, i) => publicKeyFromBase64(k, `trustedKeys[${i}]`)),
    policy: resolvePolicy(ctx.config),
    runtime: ctx.runtime,
    deviceWatch: new DeviceWatch(ctx.config.devRoot),
    store,
    version: fleetletVersion(),
    // Asked only for what the store lacks (a pinned image already stored needs no registry):
    // an agent that has nothing to pull never loads the HTTP stack.
    pull: (ref, { signal, lease }) => ctx.pull(ref, { quiet: true, onEvent: progress, signal, lease }),
    onEvent: (e) => {
      reclaimer.poke();
      onEvent?.(e);
    },
    onChange: (settled) => {
      reclaimer.poke();
      onChange?.(settled);
    },
  });
  return agent;
}

function readDesiredFile(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new FleetError(
      "E_NOT_FOUND",
      `apply: ${file}: ${(err as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (err as Error).message}`,
      { exitCode: 2 },
    );
  }
}

async function apply(ctx: CliContext, { positionals }: ParsedArgs): Promise<number> {
  if (positionals.length !== 1)
    throw new FleetError("E_INVALID_ARGUMENT", "apply: name one desired-state file", { exitCode: 2 });
  const text = readDesiredFile(positionals[0]!);
  let rejection: { code: string; message: string } | undefined;
  const agent = await createAgent(ctx, (e) => {
    if (e.type !== "progress") process.stderr.write(`${JSON.stringify(e)}\n`);
  });
  await agent.reattach();
  const outcome = await agent.submit(text, positionals[0]);
  if (outcome === "rejected") rejection = agent.lastError ?? undefined;
  await agent.idle();
  await agent.stop();
  if (rejection) {
    // The document was refused; whatever ran before runs on, untouched.
    throw new FleetError(rejection.code as "E_INVALID_DESIRED", `apply: rejected: ${rejection.message}`);
  }
  const report = agent.reported();
  const rows = Object.entries(report.services).map(([name, s]) => [
    name,
    s.state,
    s.health,
    String(s.pid ?? "-"),
    String(s.restarts),
    s.image,
  ]);
  process.stdout.write(
    `deployment ${report.deployment ?? "-"} generation ${report.generation ?? "-"}: ${report.phase}${outcome === "ignored" ? " (document not newer than the applied one)" : ""}\n`,
  );
  if (rows.length) process.stdout.write(formatTable(["SERVICE", "STATE", "HEALTH", "PID", "RESTARTS", "IMAGE"], rows));
  if (report.phase === "converged") return 0;
  throw new FleetError(
    (report.lastError?.code as "E_RUNTIME") ?? "E_RUNTIME",
    `apply: ${report.phase}: ${report.lastError?.message ?? "did not converge"}`,
  );
}

export const applyCommand: Command<CliContext> = { options: [], run: apply };
