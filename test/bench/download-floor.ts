/**
 * The pull bench's floor for "download and verify": the same image's blobs
 * fetched by plain Node (node:https with keep-alive, node:crypto's SHA-256,
 * node:fs write streams), three at a time as fleetlet pulls, and nothing of
 * fleetlet's: no resume, no store, no locks, no progress. Run by
 * pull-bench.ts under fleetlet's Node flags as
 *   node FLAGS download-floor.js HOST REPO TAG USER PASSWORD CA_FILE DEST_DIR
 * Its time is what Node itself costs for the bytes; fleetlet's over it is
 * what our code adds.
 */
const { createHash } = process.getBuiltinModule("node:crypto");
const { createWriteStream, readFileSync } = process.getBuiltinModule("node:fs");
const { Agent, request } = process.getBuiltinModule("node:https");
const { join } = process.getBuiltinModule("node:path");

const [host, repo, tag, user, password, caFile, dest] = process.argv.slice(2);
if (!dest) {
  process.stderr.write("usage: node download-floor.js HOST REPO TAG USER PASSWORD CA_FILE DEST_DIR\n");
  process.exit(2);
}
const agent = new Agent({ keepAlive: true, ca: readFileSync(caFile!) });
const auth = `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
const MANIFESTS = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/** One GET; resolves with the response, which must be 200. */
function get(path: string, accept?: string): Promise<import("node:http").IncomingMessage> {
  return new Promise((resolve, reject) => {
    const headers = { authorization: auth, ...(accept ? { accept } : {}) };
    const req = request(`https://${host}/v2/${repo}/${path}`, { agent, headers }, (res) =>
      res.statusCode === 200 ? resolve(res) : reject(new Error(`GET ${path}: HTTP ${res.statusCode}`)),
    );
    req.on("error", reject);
    req.end();
  });
}

/** Streams a blob to DEST/<hex>, hashing it on the way; rejects when its SHA-256 is not its digest. */
async function blob(digest: string): Promise<void> {
  const res = await get(`blobs/${digest}`);
  const hash = createHash("sha256");
  const out = createWriteStream(join(dest!, digest.slice("sha256:".length)));
  res.on("data", (chunk: Buffer) => {
    hash.update(chunk);
    if (!out.write(chunk)) res.pause();
  });
  out.on("drain", () => res.resume());
  await new Promise((resolve, reject) => {
    res.on("end", resolve);
    res.on("error", reject);
  });
  await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
  if (`sha256:${hash.digest("hex")}` !== digest) throw new Error(`${digest}: content does not match its digest`);
}

const res = await get(`manifests/${tag}`, MANIFESTS);
let text = "";
for await (const chunk of res) text += chunk;
const manifest = JSON.parse(text) as { config: { digest: string }; layers: { digest: string }[] };
const queue = [manifest.config.digest, ...manifest.layers.map((l) => l.digest)];
await Promise.all(
  Array.from({ length: 3 }, async () => {
    for (let d = queue.shift(); d; d = queue.shift()) await blob(d);
  }),
);
agent.destroy();
