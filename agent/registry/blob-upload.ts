/**
 * Puts one blob into a repository, for `fleetctl push`: HEADed first and
 * skipped when present, mounted from another repository of the registry
 * when it is there, else uploaded (one PUT when small, chunked PATCHes when
 * large).
 */
import type { Readable } from "node:stream";
import { FleetError } from "../errors.js";
import { type RegistryClient, repoScope } from "./registry-client.js";

/** Bytes above which a blob goes up in chunks. */
export const CHUNK_BYTES = 16 * 1024 * 1024;

export interface BlobSource {
  digest: string;
  size: number;
  /** The bytes from `start` to `end`, both inclusive; opened anew for each attempt. */
  open: (start: number, end: number) => Readable;
}

/** How the blob got into the repository. */
export type BlobOutcome = "blob-present" | "blob-mounted" | "blob-uploaded";

async function blobPresent(client: RegistryClient, repo: string, digest: string): Promise<boolean> {
  const res = await client.request("HEAD", `/v2/${repo}/blobs/${digest}`, { scope: repoScope(repo, "pull,push") });
  return res.status === 200;
}

async function tryMount(client: RegistryClient, repo: string, digest: string, from: string): Promise<boolean> {
  const res = await client.request(
    "POST",
    `/v2/${repo}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
    {
      scope: `${repoScope(repo, "pull,push")} ${repoScope(from, "pull")}`,
    },
  );
  if (res.status === 201) return true;
  if (res.status === 202 && res.headers.location) {
    // Not mountable: the registry opened an upload instead; cancel it.
    await client.request("DELETE", String(res.headers.location), { scope: repoScope(repo, "pull,push") });
  }
  return false;
}

/** PATCHes the blob in chunks of CHUNK_BYTES to the upload at `location`, then completes it with an empty PUT. */
async function uploadChunked(client: RegistryClient, repo: string, blob: BlobSource, started: URL): Promise<void> {
  const scope = repoScope(repo, "pull,push");
  const { digest, size } = blob;
  let location = started;
  for (let start = 0; start < size; start += CHUNK_BYTES) {
    const end = Math.min(size, start + CHUNK_BYTES) - 1;
    const res = await client.request("PATCH", location.pathname + location.search, {
      scope,
      headers: {
        "content-type": "application/octet-stream",
        "content-range": `${start}-${end}`,
        "content-length": String(end - start + 1),
      },
      body: () => blob.open(start, end),
    });
    if (res.status !== 202 || !res.headers.location)
      throw new FleetError(
        "E_REGISTRY",
        `${client.registry}/${repo}: uploading bytes ${start}-${end} of ${digest} answered HTTP ${res.status}`,
      );
    location = new URL(String(res.headers.location), client.origin);
  }
  location.searchParams.set("digest", digest);
  const done = await client.request("PUT", location.pathname + location.search, {
    scope,
    headers: { "content-length": "0" },
  });
  if (done.status !== 201)
    throw new FleetError(
      "E_REGISTRY",
      `${client.registry}/${repo}: completing the upload of ${digest} answered HTTP ${done.status}`,
    );
}

/** PUTs the whole blob to the upload at `location`. */
async function uploadWhole(client: RegistryClient, repo: string, blob: BlobSource, location: URL): Promise<void> {
  location.searchParams.set("digest", blob.digest);
  const res = await client.request("PUT", location.pathname + location.search, {
    scope: repoScope(repo, "pull,push"),
    headers: { "content-type": "application/octet-stream", "content-length": String(blob.size) },
    body: () => blob.open(0, blob.size - 1),
  });
  if (res.status !== 201)
    throw new FleetError(
      "E_REGISTRY",
      `${client.registry}/${repo}: uploading ${blob.digest} answered HTTP ${res.status}`,
    );
}

async function upload(client: RegistryClient, repo: string, blob: BlobSource): Promise<void> {
  const started = await client.request("POST", `/v2/${repo}/blobs/uploads/`, { scope: repoScope(repo, "pull,push") });
  if (started.status !== 202 || !started.headers.location)
    throw new FleetError(
      "E_REGISTRY",
      `${client.registry}/${repo}: starting an upload answered HTTP ${started.status}`,
    );
  const location = new URL(String(started.headers.location), client.origin);
  if (blob.size > CHUNK_BYTES) await uploadChunked(client, repo, blob, location);
  else await uploadWhole(client, repo, blob, location);
}

/** Makes `blob` present in `repo`, trying the repositories of `mountFrom` (other than `repo`) in order. */
export async function pushBlob(
  client: RegistryClient,
  repo: string,
  blob: BlobSource,
  mountFrom: string[],
): Promise<BlobOutcome> {
  if (await blobPresent(client, repo, blob.digest)) return "blob-present";
  for (const from of mountFrom.filter((r) => r !== repo)) {
    if (await tryMount(client, repo, blob.digest, from)) return "blob-mounted";
  }
  await upload(client, repo, blob);
  return "blob-uploaded";
}
