/**
 * The agent bench's floor for idle memory: a node process that uses what
 * the daemon uses of Node itself, and nothing of fleetlet's. Run by
 * agent-bench.ts under the agent's Node flags as
 *   node FLAGS node-floor.js BROKER_URL [CA_FILE] SOCKET_PATH
 * it holds a connection to the broker (TLS with the CA when the URL is
 * mqtts://, as a device's is), a status endpoint on TCP and on a unix socket,
 * a child process, a watch on a directory and a SHA-256, then prints "ready"
 * and idles. The endpoint's listeners are node:net servers, as the
 * daemon's are until someone connects (agent/api/lazy-http.ts). Its VmRSS
 * less a bare node's is what Node's own modules cost the daemon before any
 * code of ours runs.
 */

// As the bundle takes them (deploy/js-bundle.ts): node:tls is taken only
// for a TLS broker, as the daemon takes it.
const { spawn } = process.getBuiltinModule("node:child_process");
const { createHash, randomBytes } = process.getBuiltinModule("node:crypto");
const { readFileSync, watch } = process.getBuiltinModule("node:fs");
const { connect: tcpConnect, createServer } = process.getBuiltinModule("node:net");

const [url, ...rest] = process.argv.slice(2);
const socketPath = rest.at(-1);
const caFile = rest.length > 1 ? rest[0] : undefined;
if (!url || !socketPath) {
  process.stderr.write("usage: node node-floor.js BROKER_URL [CA_FILE] SOCKET_PATH\n");
  process.exit(2);
}
const broker = new URL(url);
const port = Number(broker.port);

const connected = new Promise<void>((resolve, reject) => {
  const socket =
    broker.protocol === "mqtts:"
      ? process
          .getBuiltinModule("node:tls")
          .connect({ host: broker.hostname, port, ca: readFileSync(caFile ?? "") }, resolve)
      : tcpConnect({ host: broker.hostname, port }, resolve);
  socket.on("error", reject);
});
const listening = (target: string | number) =>
  new Promise<void>((resolve) =>
    typeof target === "number"
      ? createServer((socket) => socket.end()).listen(target, "127.0.0.1", resolve)
      : createServer((socket) => socket.end()).listen(target, resolve),
  );
const child = new Promise((resolve) => spawn("/bin/true", { stdio: "ignore" }).once("exit", resolve));
watch("/tmp", () => {});
createHash("sha256").update(randomBytes(16)).digest("hex");

await Promise.all([connected, listening(0), listening(socketPath), child]);
process.stdout.write("ready\n");
setInterval(() => {}, 1000);
