/**
 * A real OCI registry for tests: Debian's docker-registry (distribution 2.8)
 * on 127.0.0.1 and a free port, TLS from a throwaway CA made with the openssl
 * CLI, filesystem storage, and htpasswd, token or no authentication. All its
 * files live in one temp dir that stop() removes.
 */
import { type ChildProcess, execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { freePort } from "./free-port.js";
import { type LoggedChild, spawnLogged } from "./logged-child.js";
import { startTokenIssuer, type TokenIssuer } from "./token-issuer.js";

export const REGISTRY_BIN = "/usr/bin/docker-registry";
/** The `service` and `issuer` the token-mode registry expects in a token's aud and iss. */
export const TOKEN_SERVICE = "fleetlet-test-registry";
export const TOKEN_ISSUER = "fleetlet-test-issuer";
const READY_TIMEOUT_MS = 10_000;

export interface RegistryFixture {
  host: string; // "127.0.0.1:PORT"
  port: number;
  pid: number; // the registry process (its CPU time is a bench's to read)
  caFile: string; // PEM of the CA that signed the server cert
  certDir: string; // a dir holding that CA as ca.crt (what skopeo's --*-cert-dir wants)
  username: string;
  password: string; // valid credentials (htpasswd and token modes)
  storageDir: string; // the registry's filesystem storage root
  tokenRequests?: () => number; // token mode: how many tokens were issued so far
  /** With accessLog: "GET /v2/…" for each request served so far, in order, once a marker request made now is logged. */
  requests?: () => Promise<string[]>;
  stop(): Promise<void>; // kills the registry (and issuer), waits for exit, removes temp dirs
}

export type RegistryAuth = "htpasswd" | "token" | "none";

/** The config's `registries` section for a fixture: its host with its credentials and CA. */
export function registriesConfig(
  reg: RegistryFixture,
): Record<string, { username: string; password: string; ca: string }> {
  return { [reg.host]: { username: reg.username, password: reg.password, ca: reg.caFile } };
}

/** Runs a tool with arguments (no shell); a failure names the tool and carries its stderr. */
export function runTool(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const why = typeof err.code === "number" ? `exit status ${err.code}` : err.message;
      reject(new Error(`${file} ${args[0] ?? ""} failed (${why}): ${stderr.trim() || "no stderr"}`));
    });
  });
}

export interface TlsFiles {
  caCert: string;
  serverCert: string;
  serverKey: string;
}

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

export async function makeTls(dir: string): Promise<TlsFiles> {
  const f = (name: string) => join(dir, name);
  await runTool("openssl", [
    "req",
    "-x509",
    ...EC_KEY,
    "-keyout",
    f("ca.key"),
    "-out",
    f("ca.crt"),
    "-days",
    "2",
    "-subj",
    "/CN=fleetlet test CA",
  ]);
  await runTool("openssl", [
    "req",
    "-new",
    ...EC_KEY,
    "-keyout",
    f("server.key"),
    "-out",
    f("server.csr"),
    "-subj",
    "/CN=localhost",
  ]);
  writeFileSync(
    f("server.ext"),
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n",
  );
  const serial = `0x${randomBytes(8).toString("hex")}`;
  await runTool("openssl", [
    "x509",
    "-req",
    "-in",
    f("server.csr"),
    "-CA",
    f("ca.crt"),
    "-CAkey",
    f("ca.key"),
    "-set_serial",
    serial,
    "-days",
    "2",
    "-extfile",
    f("server.ext"),
    "-out",
    f("server.crt"),
  ]);
  return { caCert: f("ca.crt"), serverCert: f("server.crt"), serverKey: f("server.key") };
}

/** A self-signed RSA cert for signing tokens: it is both the JWT's x5c and the registry's rootcertbundle. */
async function makeTokenSigner(dir: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, "token-signer.crt");
  const key = join(dir, "token-signer.key");
  await runTool("openssl", [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    key,
    "-out",
    cert,
    "-days",
    "2",
    "-subj",
    "/CN=fleetlet test token signer",
  ]);
  return { cert, key };
}

interface Layout {
  root: string;
  tls: TlsFiles;
  storageDir: string;
  certDir: string;
}

async function authSection(
  auth: RegistryAuth,
  layout: Layout,
  username: string,
  password: string,
): Promise<{ yaml: string; issuer?: TokenIssuer }> {
  if (auth === "none") return { yaml: "" };
  if (auth === "htpasswd") {
    const file = join(layout.root, "htpasswd");
    writeFileSync(file, await runTool("htpasswd", ["-Bbn", username, password]));
    return { yaml: `auth:\n  htpasswd:\n    realm: fleetlet-test-registry\n    path: ${JSON.stringify(file)}\n` };
  }
  const signer = await makeTokenSigner(layout.root);
  const pem = (file: string) => readFileSync(file, "utf8");
  const issuer = await startTokenIssuer({
    tls: { cert: pem(layout.tls.serverCert), key: pem(layout.tls.serverKey) },
    signing: { cert: pem(signer.cert), key: pem(signer.key) },
    username,
    password,
    service: TOKEN_SERVICE,
    issuer: TOKEN_ISSUER,
  });
  const yaml = `auth:\n  token:\n    realm: ${issuer.realm}\n    service: ${TOKEN_SERVICE}\n    issuer: ${TOKEN_ISSUER}\n    rootcertbundle: ${JSON.stringify(signer.cert)}\n`;
  return { yaml, issuer };
}

function configYaml(layout: Layout, port: number, auth: string, accessLog: boolean): string {
  const q = JSON.stringify;
  return `version: 0.1
log:
  level: error
  accesslog:
    disabled: ${!accessLog}
storage:
  filesystem:
    rootdirectory: ${q(layout.storageDir)}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port}
  secret: ${randomBytes(16).toString("hex")}
  tls:
    certificate: ${q(layout.tls.serverCert)}
    key: ${q(layout.tls.serverKey)}
${auth}`;
}

/** The status of GET url, or undefined when nothing answers yet. */
function probe(url: string, ca: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = request(url, { ca, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(undefined));
    req.end();
  });
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function waitUntilServing(url: string, ca: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  // Probes once more after the deadline: a stalled test process must not skip the last look.
  for (let last = false; !last; ) {
    last = Date.now() >= deadline;
    if (exited(child))
      throw new Error(
        `docker-registry exited (${child.exitCode ?? child.signalCode}) before answering ${url}:\n${output()}`,
      );
    const status = await probe(url, ca);
    if (status === 200 || status === 401) return;
    if (!last) await delay(100);
  }
  throw new Error(`docker-registry did not answer ${url} within ${READY_TIMEOUT_MS / 1000} s:\n${output()}`);
}

async function terminate(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  const exit = once(child, "exit");
  child.kill("SIGTERM");
  const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exit;
  clearTimeout(killer);
}

function spawnRegistry(configFile: string): LoggedChild {
  return spawnLogged(REGISTRY_BIN, ["serve", configFile]);
}

/** Starts the registry, retrying with another port when the free one was taken meanwhile. */
async function serve(layout: Layout, auth: string, accessLog: boolean): Promise<{ child: ChildProcess; port: number }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const configFile = join(layout.root, "config.yml");
    writeFileSync(configFile, configYaml(layout, port, auth, accessLog));
    const { child, output } = spawnRegistry(configFile);
    // If the test process dies without stop(), the registry must not outlive it.
    const reap = () => child.kill("SIGKILL");
    process.once("exit", reap);
    child.once("exit", () => process.off("exit", reap));
    try {
      await waitUntilServing(`https://127.0.0.1:${port}/v2/`, readFileSync(layout.tls.caCert, "utf8"), child, output);
      return { child, port };
    } catch (err) {
      await terminate(child);
      if (attempt < 3 && output().includes("address already in use")) continue;
      throw err;
    }
  }
}

async function makeLayout(): Promise<Layout> {
  const root = mkdtempSync(join(tmpdir(), "fleetlet-registry-"));
  const tls = await makeTls(root);
  const certDir = join(root, "certs");
  const storageDir = join(root, "storage");
  mkdirSync(certDir);
  mkdirSync(storageDir);
  copyFileSync(tls.caCert, join(certDir, "ca.crt"));
  return { root, tls, certDir, storageDir };
}

/**
 * The method and path of each request in the registry's access log (combined
 * format). The registry writes a request's line after its answer, so a
 * marker request (`GET /v2/?mark=N`, not counted) is made and waited for.
 */
function requestLog(child: ChildProcess, url: string, ca: string): () => Promise<string[]> {
  const seen: string[] = [];
  let marks = 0;
  let partial = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      const m = /"([A-Z]+) (\S+) HTTP\/[\d.]+"/.exec(line);
      if (m) seen.push(`${m[1]} ${m[2]}`);
    }
  });
  return async () => {
    const mark = `GET /v2/?mark=${++marks}`;
    await probe(`${url}?mark=${marks}`, ca);
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (!seen.includes(mark)) {
      if (Date.now() > deadline) throw new Error(`the registry's access log never showed ${mark}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return seen.filter((r) => !r.startsWith("GET /v2/?mark="));
  };
}

export async function startRegistry(
  opts: { auth: RegistryAuth; accessLog?: boolean } = { auth: "htpasswd" },
): Promise<RegistryFixture> {
  const layout = await makeLayout();
  const username = "fleetlet";
  const password = randomBytes(12).toString("hex");
  let issuer: TokenIssuer | undefined;
  let child: ChildProcess | undefined;
  const cleanup = async () => {
    if (child) await terminate(child);
    await issuer?.stop();
    rmSync(layout.root, { recursive: true, force: true });
  };
  try {
    const auth = await authSection(opts.auth, layout, username, password);
    issuer = auth.issuer;
    const started = await serve(layout, auth.yaml, opts.accessLog ?? false);
    child = started.child;
    const ca = readFileSync(layout.tls.caCert, "utf8");
    const requests = opts.accessLog ? requestLog(child, `https://127.0.0.1:${started.port}/v2/`, ca) : undefined;
    let stopping: Promise<void> | undefined;
    return {
      host: `127.0.0.1:${started.port}`,
      port: started.port,
      pid: started.child.pid!,
      caFile: layout.tls.caCert,
      certDir: layout.certDir,
      username,
      password,
      storageDir: layout.storageDir,
      ...(issuer ? { tokenRequests: issuer.tokenRequests } : {}),
      ...(requests ? { requests } : {}),
      stop: () => {
        stopping ??= cleanup();
        return stopping;
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
