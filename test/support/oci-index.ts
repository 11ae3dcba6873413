/** An index put straight into a test registry over an image already there: one manifest, listed per platform. */
import { type RegistryAuthConfig, RegistryClient } from "../../agent/registry/registry-client.js";
import { sha256Digest } from "../../agent/store/digest.js";

const MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const INDEX = "application/vnd.oci.image.index.v1+json";

export type IndexPlatform = { os: string; architecture: string; variant?: string };

/**
 * Puts `<repo>:<tag>`, an index whose entries are the manifest of `<repo>:<from>`, once per platform.
 * Resolves with that manifest's digest; throws unless the registry took the index (HTTP 201).
 */
export async function putIndex(
  host: string,
  auth: RegistryAuthConfig,
  image: { repo: string; from: string; tag: string },
  platforms: IndexPlatform[],
): Promise<string> {
  const client = new RegistryClient(host, auth);
  const scope = `repository:${image.repo}:pull,push`;
  try {
    const m = await client.request("GET", `/v2/${image.repo}/manifests/${image.from}`, {
      scope,
      headers: { accept: MANIFEST },
    });
    const digest = sha256Digest(m.body);
    const index = {
      schemaVersion: 2,
      mediaType: INDEX,
      manifests: platforms.map((platform) => ({ mediaType: MANIFEST, digest, size: m.body.length, platform })),
    };
    const res = await client.request("PUT", `/v2/${image.repo}/manifests/${image.tag}`, {
      scope,
      headers: { "content-type": INDEX },
      body: Buffer.from(JSON.stringify(index)),
    });
    if (res.status !== 201) throw new Error(`PUT ${image.repo}:${image.tag}: HTTP ${res.status}, not 201`);
    return digest;
  } finally {
    client.close();
  }
}
