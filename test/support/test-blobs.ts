/** Small helpers the store and registry tests share: random blobs, and the FleetError a promise rejects with. */
import { createHash, randomBytes } from "node:crypto";
import { expect } from "vitest";
import { FleetError } from "../../agent/errors.js";

/** `size` random bytes and their digest. */
export function randomBlob(size: number): { data: Buffer; digest: string } {
  const data = randomBytes(size);
  return { data, digest: `sha256:${createHash("sha256").update(data).digest("hex")}` };
}

/** The FleetError `p` rejects with; fails the test when it resolves or rejects with anything else. */
export async function caught(p: Promise<unknown>): Promise<FleetError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FleetError);
  return err as FleetError;
}
