/** `fleetctl rollout`, `rollout resume` and `rollout abort`: staged rollouts to a group (fleet/rollout.ts drives them). */
import type { KeyObject } from "node:crypto";
import { hostname } from "node:os";
import type { FailureLimit, RolloutProgress } from "../../schemas/rollout.js";
import { FleetError } from "../errors.js";
import {
  finishDocument,
  pickGeneration,
  type RawDocument,
  readDocumentFile,
  retainedDocument,
} from "../fleet/desired-document.js";
import type { FleetClient } from "../fleet/fleet-client.js";
import { FleetView } from "../fleet/fleet-view.js";
import { parseDuration, parseFailureLimit, parseWaves, Rollout } from "../fleet/rollout.js";
import { canonicalJson } from "../protocol/canonical-json.js";
import { loadSigningKey } from "../protocol/signature.js";
import type { ParsedArgs } from "./args.js";
import type { Command } from "./command-line.js";
import { connect, type OperatorContext, usage, validFor } from "./fleet-commands.js";
import { progressPrinter, retainedProgress, rolloutLine, rolloutOutcome } from "./rollout-progress.js";

/** The command line, checked before the broker is reached. */
interface RolloutRequest {
  group: string;
  action: "start" | "resume" | "abort";
  /** `start`: the file named and the document in it. */
  file?: string;
  document?: RawDocument;
  key?: KeyObject;
  /** `--valid-for`: each document published gets notAfter = its publication + this. */
  valid: { validForMs?: number };
  rollback: boolean;
  allowEmpty: boolean;
  given: { waves: number[]; healthyWithinMs: number; maxFailures: FailureLimit };
}

/** What is rolled out: the document, where it came from (for messages), and the progress it carries on from. */
interface RolloutPlan {
  raw: RawDocument;
  file: string;
  resume?: RolloutProgress;
}

function readRequest({ options, positionals }: ParsedArgs): RolloutRequest {
  const group = options.group as string | undefined;
  if (!group) throw usage("rollout: --group G is needed");
  const key = options["sign-key"] ? loadSigningKey(options["sign-key"] as string) : undefined;
  const action = positionals[0] === "abort" || positionals[0] === "resume" ? positionals[0] : "start";
  if (action === "start" && positionals.length !== 1) throw usage("rollout: expected one FILE (or `abort` / `resume`)");
  if (options.rollback && action !== "abort") throw usage("rollout: --rollback goes with `rollout abort`");
  const file = action === "start" ? positionals[0]! : undefined;
  const document = file ? readDocumentFile(file) : undefined;
  const valid = validFor(options);
  if (file && document) {
    const generation = typeof document.generation === "number" ? document.generation : 1;
    finishDocument(document, { generation, target: `group/${group}`, ...valid }, { file });
  }
  return {
    group,
    action,
    ...(file && document ? { file, document } : {}),
    ...(key ? { key } : {}),
    valid,
    rollback: options.rollback === true,
    allowEmpty: options["allow-empty"] === true,
    given: {
      waves: parseWaves((options.waves as string | undefined) ?? "100"),
      healthyWithinMs: parseDuration((options["healthy-within"] as string | undefined) ?? "2m", "--healthy-within"),
      maxFailures: parseFailureLimit((options["max-failures"] as string | undefined) ?? "0"),
    },
  };
}

/** A document's content without what fleetctl sets (generation, target, rollout, notAfter, signature). */
function sameContent(doc: Record<string, unknown>): string {
  const { generation: _g, target: _t, rollout: _r, notAfter: _n, signature: _s, ...rest } = doc;
  return canonicalJson(rest);
}

/** `rollout abort --rollback`: the wave's devices restore what ran before the deployment. */
async function publishRollback(client: FleetClient, req: RolloutRequest, current: RolloutProgress): Promise<void> {
  const groupTopic = client.topics.groupDesired(req.group);
  const raw = await retainedDocument(client, groupTopic);
  if (!raw || raw.deployment !== current.deployment)
    throw new FleetError("E_CONFLICT", `rollout abort --rollback: ${groupTopic} no longer holds ${current.deployment}`);
  if (raw.signature && !req.key)
    throw usage(
      `rollout abort --rollback: ${groupTopic} holds a signed document; give --sign-key, or the devices would refuse the rollback`,
    );
  const { payload } = finishDocument(
    raw,
    {
      generation: current.generation + 1,
      target: `group/${req.group}`,
      rollout: { percent: current.waves[current.wave]!, rollback: true },
      ...req.valid,
    },
    { file: groupTopic, ...(req.key ? { key: req.key } : {}) },
  );
  await client.publish(groupTopic, payload, { retain: true });
}

async function abort(client: FleetClient, req: RolloutRequest, current: RolloutProgress | undefined) {
  if (current?.state !== "running")
    throw new FleetError(
      "E_NOT_FOUND",
      `rollout abort: group ${req.group} has no running rollout${current ? ` (the last one is ${current.state})` : ""}`,
    );
  if (req.rollback) await publishRollback(client, req, current);
  const aborted: RolloutProgress = {
    ...current,
    state: "aborted",
    reason: `aborted by ${hostname()}${req.rollback ? "; the wave was rolled back" : "; devices keep what they run"}`,
    by: hostname(),
    updatedAt: new Date().toISOString(),
  };
  await client.publish(client.topics.groupRollout(req.group), JSON.stringify(aborted), { retain: true });
  process.stdout.write(rolloutLine(aborted));
  return 0;
}

/** `rollout resume`: the interrupted rollout's own document, from the group's topic. */
async function resumePlan(client: FleetClient, group: string, current: RolloutProgress | undefined) {
  if (!current || (current.state !== "running" && current.state !== "aborted"))
    throw new FleetError(
      "E_NOT_FOUND",
      `rollout resume: group ${group} has no interrupted rollout${current ? ` (the last one ${current.state}; start a new one)` : ""}`,
    );
  const groupTopic = client.topics.groupDesired(group);
  const retained = await retainedDocument(client, groupTopic);
  if (!retained || retained.deployment !== current.deployment)
    throw new FleetError("E_CONFLICT", `rollout resume: ${groupTopic} no longer holds ${current.deployment}`);
  if ((retained.rollout as { rollback?: unknown } | undefined)?.rollback === true)
    throw new FleetError(
      "E_CONFLICT",
      `rollout resume: the rollout of ${current.deployment} was rolled back; start a new rollout`,
    );
  return { raw: retained, file: groupTopic, resume: current };
}

/** `rollout FILE`: a new rollout, or the one under way carried on when FILE is the document it rolls out. */
async function startPlan(client: FleetClient, req: RolloutRequest, current: RolloutProgress | undefined) {
  const plan: RolloutPlan = { raw: req.document!, file: req.file! };
  if (current?.state !== "running") return plan;
  const { group } = req;
  if (current.deployment !== plan.raw.deployment)
    throw new FleetError(
      "E_CONFLICT",
      `rollout: group ${group} has a rollout of ${current.deployment} under way (wave ${current.wave + 1}/${current.waves.length}, by ${current.by}); abort it first with \`fleetctl rollout abort --group ${group}\``,
    );
  const published = await retainedDocument(client, client.topics.groupDesired(group));
  if (!published || sameContent(published) !== sameContent(plan.raw))
    throw new FleetError(
      "E_CONFLICT",
      `rollout: ${plan.file} differs from the ${current.deployment} being rolled out; give the changed document a new deployment name (or abort the rollout first)`,
    );
  process.stderr.write(
    `resuming the rollout of ${current.deployment} at wave ${current.wave + 1}/${current.waves.length}\n`,
  );
  return { ...plan, resume: current };
}

/** Runs the plan's waves; refuses a group with no known device unless --allow-empty. */
async function drive(client: FleetClient, req: RolloutRequest, plan: RolloutPlan): Promise<number> {
  const { group, key } = req;
  const { raw, file, resume } = plan;
  const { waves, healthyWithinMs, maxFailures } = resume ?? req.given;
  const groupTopic = client.topics.groupDesired(group);
  const generation = resume
    ? resume.generation
    : pickGeneration(raw, await retainedDocument(client, groupTopic), groupTopic);
  if (resume && raw.signature && !key)
    throw usage(
      `rollout: ${groupTopic} holds a signed document; give --sign-key, or the devices would refuse the next wave`,
    );
  finishDocument(raw, { generation, target: `group/${group}`, ...req.valid }, { file }); // validate before anything is published
  const view = await FleetView.open(client);
  const rollout = new Rollout({
    client,
    view,
    group,
    raw,
    file,
    waves,
    healthyWithinMs,
    maxFailures,
    generation,
    ...(key ? { key } : {}),
    ...req.valid,
    ...(resume ? { resume } : {}),
    allowEmpty: req.allowEmpty,
    onProgress: progressPrinter(),
  });
  process.stderr.write(
    `rollout of ${String(raw.deployment)} (generation ${generation}) to group ${group}: ${view.list(group).length} device(s) known, waves ${waves.join(",")}%, healthy within ${healthyWithinMs / 1000} s, ${"count" in maxFailures ? maxFailures.count : `${maxFailures.percent}%`} failure(s) allowed per wave\n`,
  );
  return rolloutOutcome(await rollout.run());
}

async function rollout(ctx: OperatorContext, args: ParsedArgs): Promise<number> {
  const req = readRequest(args);
  const client = await connect(ctx);
  try {
    const current = await retainedProgress(client, req.group);
    if (req.action === "abort") return await abort(client, req, current);
    const plan =
      req.action === "resume" ? await resumePlan(client, req.group, current) : await startPlan(client, req, current);
    return await drive(client, req, plan);
  } finally {
    await client.close();
  }
}

export const rolloutCommand: Command<OperatorContext> = {
  options: [
    { name: "group", type: "string" },
    { name: "waves", type: "string" },
    { name: "healthy-within", type: "string" },
    { name: "max-failures", type: "string" },
    { name: "sign-key", type: "string" },
    { name: "valid-for", type: "string" },
    { name: "rollback", type: "boolean" },
    { name: "allow-empty", type: "boolean" },
  ],
  run: rollout,
};
