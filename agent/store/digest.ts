/** Content digests: only sha256, as `sha256:<64 lowercase hex>`. */
import { createHash } from "node:crypto";
import { FleetError } from "../errors.js";

/** The digest of bytes held in memory (a manifest, a config). */
export function sha256Digest(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

const DIGEST = /^sha256:[a-f0-9]{64}$/;

/** The hex part of a digest, after checking it; `what` names it in errors. */
export function digestHex(digest: string, what = "digest"): string {
  if (!DIGEST.test(digest)) {
    const algo = digest.split(":")[0];
    const reason =
      digest.includes(":") && algo !== "sha256"
        ? `algorithm ${algo} is not supported (only sha256)`
        : "expected sha256:<64 hex digits>";
    throw new FleetError("E_INVALID_ARGUMENT", `${what} "${digest}": ${reason}`);
  }
  return digest.slice(7);
}
