/**
 * What the agent makes of one desired-state message, before anything runs:
 * parse, check the signature (required when the policy says so, and checked
 * whenever there is one), validate, check the target and `notAfter`, for
 * group documents decide whether this device is in the rollout wave, and
 * hold a document to apply to the device's policy (policy.ts).
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
import { type DevicePolicy, enforcePolicy } from "./policy.js";

export type Intake =
  | { kind: "apply"; doc: DesiredState; signed: boolean }
  | { kind: "rollback"; doc: DesiredState; signed: boolean }
  | { kind: "notInWave"; doc: DesiredState; signed: boolean };

export interface IntakeOptions {
  deviceId: string;
  /** Where the document came from, for messages ("fleet group pilot desired", a file name). */
  source: string;
  /** Group documents are subject to the rollout wave; a device's own document is not. */
  fromGroup: boolean;
  trustedKeys: KeyObject[];
  /** What the device allows a document to ask for; `requireSigned` refuses unsigned documents. */
  policy: DevicePolicy;
  /** The topic's target ("device/<id>", "group/<name>"); a document naming another is refused. None for a local file. */
  target?: string;
  /** The time to judge `notAfter` by (ms since the epoch); now by default. */
  now?: number;
  /**
   * The generation the device already accepted from this topic, if any. The
   * topic's retained document comes again at every connect; once accepted it
   * is not refused for expiring since (it runs, and nothing newer is taken
   * from it without passing every check).
   */
  acceptedGeneration?: number | null;
}

/** The message as a JSON object; anything else is refused, naming the document as the field at fault. */
function parsePayload(payload: string | Buffer | object, source: string): object {
  let raw: unknown = payload;
  if (typeof payload !== "object" || Buffer.isBuffer(payload)) {
    try {
      raw = JSON.parse(payload.toString());
    } catch (err) {
      throw new FleetError("E_INVALID_DESIRED", `${source}: not valid JSON: ${(err as Error).message}`);
    }
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    const got = raw === null ? "null" : Array.isArray(raw) ? "an array" : `a ${typeof raw}`;
    throw new FleetError("E_INVALID_DESIRED", `${source}: document: expected a JSON object, got ${got}`);
  }
  return raw;
}

/** A signed document names the topic it is for, and only that one. */
function checkTarget(doc: DesiredState, signed: boolean, opts: IntakeOptions): void {
  if (!opts.target) return;
  if (doc.target !== undefined && doc.target !== opts.target) {
    throw new FleetError(
      signed ? "E_BAD_SIGNATURE" : "E_INVALID_DESIRED",
      `${opts.source}: target: the document is for ${doc.target}, not ${opts.target}; refused (a document replayed to another topic)`,
    );
  }
  if (signed && doc.target === undefined) {
    throw new FleetError(
      "E_BAD_SIGNATURE",
      `${opts.source}: target: a signed document must name its target (fleetctl deploy and rollout set it)`,
    );
  }
}

/** A document past its `notAfter` is refused (E_EXPIRED): an old signed document cannot be replayed for ever. */
function checkExpiry(doc: DesiredState, opts: IntakeOptions): void {
  if (doc.notAfter === undefined) return;
  if (opts.acceptedGeneration != null && doc.generation <= opts.acceptedGeneration) return; // not new: the generation check decides
  const now = opts.now ?? Date.now();
  if (Date.parse(doc.notAfter) < now)
    throw new FleetError(
      "E_EXPIRED",
      `${opts.source}: notAfter: the document expired at ${doc.notAfter} (the device's clock says ${new Date(now).toISOString()}); refused`,
    );
}

/**
 * Reads a message; throws E_INVALID_DESIRED, E_BAD_SIGNATURE, E_EXPIRED or
 * E_POLICY naming the field and the reason. A document to apply comes back
 * with the policy's default limits filled in.
 */
export function readDesired(payload: string | Buffer | object, opts: IntakeOptions): Intake {
  const raw = parsePayload(payload, opts.source);
  // The signature covers the document as published, before defaults are filled in.
  const signed = verifyDocument(raw, opts.trustedKeys, opts.source, { required: opts.policy.requireSigned });
  const parsed = desiredState.safeParse(raw);
  if (!parsed.success) throw new FleetError("E_INVALID_DESIRED", `${opts.source}: ${formatIssues(parsed.error)}`);
  const doc = parsed.data;
  checkTarget(doc, signed || opts.policy.requireSigned, opts);
  checkExpiry(doc, opts);
  if (opts.fromGroup && !inRolloutWave(opts.deviceId, doc.deployment, doc.rollout.percent))
    return { kind: "notInWave", doc, signed };
  if (opts.fromGroup && doc.rollout.rollback) return { kind: "rollback", doc, signed };
  return { kind: "apply", doc: enforcePolicy(doc, opts.policy, opts.source), signed };
}
