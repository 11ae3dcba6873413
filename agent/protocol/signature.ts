/**
 * Signed desired state: an ed25519 signature (base64) over the RFC 8785
 * canonical JSON of the document without its `signature` member. Public keys
 * travel as base64 of the raw 32 bytes (the config's `trustedKeys`); private
 * keys live in PKCS#8 PEM files made by `fleetctl keygen`.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign, verify } from "node:crypto";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { FleetError } from "../errors.js";
import { canonicalJson } from "./canonical-json.js";

/** The DER prefix of an ed25519 SubjectPublicKeyInfo; the raw key follows it. */
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

function signedBytes(doc: Record<string, unknown>): Buffer {
  const { signature: _ignored, ...rest } = doc;
  return Buffer.from(canonicalJson(rest));
}

export function publicKeyFromBase64(b64: string, what = "trustedKeys"): KeyObject {
  const raw = Buffer.from(b64, "base64");
  if (raw.length !== 32 || raw.toString("base64") !== b64.trim())
    throw new FleetError(
      "E_INVALID_CONFIG",
      `${what}: "${b64}" is not an ed25519 public key (expected base64 of 32 bytes)`,
    );
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: "der", type: "spki" });
}

export function publicKeyToBase64(key: KeyObject): string {
  return (key.export({ format: "der", type: "spki" }) as Buffer)
    .subarray(SPKI_ED25519_PREFIX.length)
    .toString("base64");
}

/** Writes a new key pair: the private key to `file` (0600), the public key to `file.pub`; returns the public key. */
export function generateSigningKey(file: string): string {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const pub = publicKeyToBase64(publicKey);
  writeFileSync(file, privateKey.export({ format: "pem", type: "pkcs8" }), { mode: 0o600, flag: "wx" });
  chmodSync(file, 0o600); // the umask may have narrowed it, never widened; make it exact
  writeFileSync(`${file}.pub`, `${pub}\n`, { mode: 0o644 });
  return pub;
}

export function loadSigningKey(file: string): KeyObject {
  let pem: string;
  try {
    pem = readFileSync(file, "utf8");
  } catch (err) {
    throw new FleetError("E_NOT_FOUND", `--sign-key ${file}: ${(err as Error).message}`, { exitCode: 2 });
  }
  try {
    const key = createPrivateKey(pem);
    if (key.asymmetricKeyType !== "ed25519") throw new Error(`a ${key.asymmetricKeyType} key, not ed25519`);
    return key;
  } catch (err) {
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `--sign-key ${file}: not an ed25519 private key: ${(err as Error).message}`,
      { exitCode: 2 },
    );
  }
}

/** The document with its `signature` set (any earlier one replaced). */
export function signDocument<T extends Record<string, unknown>>(doc: T, key: KeyObject): T & { signature: string } {
  const signature = sign(null, signedBytes(doc), key).toString("base64");
  return { ...doc, signature };
}

/**
 * Checks a parsed document against the trusted keys; throws E_BAD_SIGNATURE
 * when it is unsigned and `required`, or carries a signature that does not
 * verify: altered, signed by a key that is not trusted, or signed at all on a
 * device that trusts no key (a signature nobody can check proves nothing, and
 * accepting it would let an operator believe it did). Returns whether the
 * document was signed (and so verified).
 */
export function verifyDocument(
  doc: unknown,
  trusted: KeyObject[],
  source: string,
  opts: { required: boolean } = { required: trusted.length > 0 },
): boolean {
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    if (!opts.required) return false; // the schema refuses it, naming what it expected
    throw new FleetError("E_BAD_SIGNATURE", `${source}: not a signed document (expected a JSON object)`);
  }
  const signature = (doc as Record<string, unknown>).signature;
  if (signature === undefined) {
    if (!opts.required) return false;
    throw new FleetError(
      "E_BAD_SIGNATURE",
      `${source}: signature: the document is not signed, and this device trusts only signed documents`,
    );
  }
  if (typeof signature !== "string")
    throw new FleetError("E_BAD_SIGNATURE", `${source}: signature: expected base64 of a 64-byte ed25519 signature`);
  if (!trusted.length)
    throw new FleetError(
      "E_BAD_SIGNATURE",
      `${source}: signature: this device trusts no key (trustedKeys is empty), so it cannot check the signature; add the signing key to trustedKeys, or publish the document unsigned`,
    );
  const sig = Buffer.from(signature, "base64");
  if (sig.length !== 64)
    throw new FleetError("E_BAD_SIGNATURE", `${source}: signature: expected base64 of a 64-byte ed25519 signature`);
  let bytes: Buffer;
  try {
    bytes = signedBytes(doc as Record<string, unknown>);
  } catch (err) {
    throw new FleetError("E_BAD_SIGNATURE", `${source}: ${(err as Error).message}`);
  }
  if (!trusted.some((key) => verify(null, bytes, key, sig))) {
    throw new FleetError(
      "E_BAD_SIGNATURE",
      `${source}: signature: does not verify with any of the ${trusted.length} trusted key(s): the document was altered or signed by an unknown key`,
    );
  }
  return true;
}
