/**
 * What the agent makes of one desired-state message, before anything runs:
 * parse, check the signature (when the device trusts keys), validate, and for
 * group documents decide whether this device is in the rollout wave.
 *
 * Wave semantics (README, "Rollout waves, exactly"; agent/protocol/waves.ts): a device is in the wave of a
 * group document when a stable hash of (deviceId, deployment) falls below
 * `rollout.percent`; outside it, the device keeps what it runs. Raising the
 * percent only adds devices. `rollout.rollback: true` makes the devices in the
 * wave that run that deployment restore the deployment that was good before it.
 */
import type { KeyObject } from "node:crypto";
import { type DesiredState, desiredState } from "../../schemas/desired.js";
import { formatIssues } from "../../schemas/format-issues.js";
import { FleetError } from "../errors.js";
import { verifyDocument } from "../protocol/signature.js";
import { inRolloutWave } from "../protocol/waves.js";

export type Intake =
  | { kind: "apply"; doc: DesiredState }
  | { kind: "rollback"; doc: DesiredState }
  | { kind: "notInWave"; doc: DesiredState };

export interface IntakeOptions {
  deviceId: string;
  /** Where the document came from, for messages ("fleet group pilot desired", a file name). */
  source: string;
  /** Group documents are subject to the rollout wave; a device's own document is not. */
  fromGroup: boolean;
  trustedKeys: KeyObject[];
  /** The topic's target ("device/<id>", "group/<name>"); a document naming another is refused. None for a local file. */
  target?: string;
}

/** Reads a message; throws E_INVALID_DESIRED or E_BAD_SIGNATURE naming the field and the reason. */
export function readDesired(payload: string | Buffer | object, opts: IntakeOptions): Intake {
  let raw: unknown;
  if (typeof payload === "object" && !Buffer.isBuffer(payload)) raw = payload;
  else {
    try {
      raw = JSON.parse(payload.toString());
    } catch (err) {
      throw new FleetError("E_INVALID_DESIRED", `${opts.source}: not valid JSON: ${(err as Error).message}`);
    }
  }
  // The signature covers the document as published, before defaults are filled in.
  verifyDocument(raw, opts.trustedKeys, opts.source);
  const parsed = desiredState.safeParse(raw);
  if (!parsed.success) throw new FleetError("E_INVALID_DESIRED", `${opts.source}: ${formatIssues(parsed.error)}`);
  const doc = parsed.data;
  if (opts.target && doc.target !== undefined && doc.target !== opts.target) {
    throw new FleetError(
      opts.trustedKeys.length ? "E_BAD_SIGNATURE" : "E_INVALID_DESIRED",
      `${opts.source}: target: the document is for ${doc.target}, not ${opts.target}; refused (a document replayed to another topic)`,
    );
  }
  if (opts.target && opts.trustedKeys.length && doc.target === undefined) {
    throw new FleetError(
      "E_BAD_SIGNATURE",
      `${opts.source}: target: a signed document must name its target (fleetctl deploy and rollout set it)`,
    );
  }
  if (opts.fromGroup && !inRolloutWave(opts.deviceId, doc.deployment, doc.rollout.percent))
    return { kind: "notInWave", doc };
  return { kind: opts.fromGroup && doc.rollout.rollback ? "rollback" : "apply", doc };
}
