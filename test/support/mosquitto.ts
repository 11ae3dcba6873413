/**
 * A real MQTT broker for tests: Debian's mosquitto 2 on 127.0.0.1 and a free
 * port, optionally with TLS from a throwaway CA made with the openssl CLI,
 * client certificates (the certificate's CN becomes the username), a password
 * file and an ACL file. Its files live in one temp dir that stop() removes.
 */
import { type ChildProcess, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { freePort } from "./free-port.js";
import { type LoggedChild, spawnLogged } from "./logged-child.js";

export const MOSQUITTO_BIN = "/usr/sbin/mosquitto";
const READY_TIMEOUT_MS = 10_000;

export interface MosquittoOptions {
  tls?: boolean;
  /** Requires a client certificate signed by the fixture's CA; its CN is the username. Implies tls. */
  clientCerts?: boolean;
  passwordFile?: { username: string; password: string };
  /** Path of a mosquitto ACL file. */
  aclFile?: string;
  /**
   * The whole mosquitto.conf, in place of the one this fixture writes: for
   * testing a config kept elsewhere (deploy/mosquitto/mosquitto.conf). It gets
   * the port and the fixture's files; tls/clientCerts still make the CA and
   * the broker's certificate, and passwordFile still writes `dir`/passwd.
   */
  config?: (files: BrokerFiles) => string;
}

/** What a custom config may point at: the fixture's port, temp dir and TLS files ("" without tls). */
export interface BrokerFiles {
  port: number;
  dir: string;
  cafile: string;
  certfile: string;
  keyfile: string;
}

export interface MosquittoFixture {
  url: string; // mqtt://127.0.0.1:PORT or mqtts://127.0.0.1:PORT
  port: number;
  caFile: string; // the CA that signed the broker's certificate ("" without tls)
  /** A client certificate and key (paths) for `cn`, signed by the fixture's CA; only with clientCerts. */
  clientCert(cn: string): { cert: string; key: string };
  /** Stops the broker (SIGTERM) and starts it again on the same port with the same config. */
  restart(): Promise<void>;
  /** Sends SIGHUP: mosquitto rereads its config, ACL and certificates in its next loop; poll for the effect. */
  reload(): void;
  stop(): Promise<void>; // kills the broker, waits for it, removes the temp dir; idempotent
  kill9(): void; // SIGKILLs the broker at once (stop() still cleans up)
}

function openssl(args: string[]): void {
  try {
    execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`openssl ${args[0]} failed: ${stderr || (err as Error).message}`);
  }
}

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/** A self-signed CA in `dir` (ca.crt, ca.key). Exported so tests can make a CA the broker does not use. */
export function createTestCa(dir: string, name = "ca"): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  openssl([
    "req",
    "-x509",
    ...EC_KEY,
    "-keyout",
    key,
    "-out",
    cert,
    "-days",
    "2",
    "-subj",
    `/CN=fleetlet test ${name}`,
  ]);
  return { cert, key };
}

/** A leaf certificate for `cn` signed by `ca`, for a server (SAN 127.0.0.1/localhost) or a client. */
function issueCert(
  dir: string,
  ca: { cert: string; key: string },
  cn: string,
  use: "server" | "client",
): { cert: string; key: string } {
  const base = join(dir, `${use}-${cn.replace(/[^a-zA-Z0-9_.-]/g, "_")}`);
  const ext =
    use === "server"
      ? "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
      : "extendedKeyUsage=clientAuth\n";
  writeFileSync(`${base}.ext`, `${ext}basicConstraints=critical,CA:FALSE\n`);
  openssl(["req", "-new", ...EC_KEY, "-keyout", `${base}.key`, "-out", `${base}.csr`, "-subj", `/CN=${cn}`]);
  const serial = `0x${randomBytes(8).toString("hex")}`;
  openssl([
    "x509",
    "-req",
    "-in",
    `${base}.csr`,
    "-CA",
    ca.cert,
    "-CAkey",
    ca.key,
    "-set_serial",
    serial,
    "-days",
    "2",
    "-extfile",
    `${base}.ext`,
    "-out",
    `${base}.crt`,
  ]);
  return { cert: `${base}.crt`, key: `${base}.key` };
}

interface ServerTls {
  ca: string;
  cert: string;
  key: string;
}

function configText(root: string, port: number, opts: MosquittoOptions, tls: ServerTls | undefined): string {
  if (opts.config)
    return opts.config({ port, dir: root, cafile: tls?.ca ?? "", certfile: tls?.cert ?? "", keyfile: tls?.key ?? "" });
  const lines = [
    // Run as root, mosquitto would switch to the `mosquitto` user, which cannot read our 0700 temp dir.
    "user root",
    `listener ${port} 127.0.0.1`,
    "persistence false",
    // As deploy/mosquitto/mosquitto.conf: each delivery goes out at once, not behind the last one's ACK.
    "set_tcp_nodelay true",
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    "log_type notice",
  ];
  if (opts.passwordFile) lines.push("allow_anonymous false", `password_file ${join(root, "passwd")}`);
  else lines.push("allow_anonymous true");
  if (opts.aclFile) lines.push(`acl_file ${opts.aclFile}`);
  if (tls) {
    lines.push(`cafile ${tls.ca}`, `certfile ${tls.cert}`, `keyfile ${tls.key}`);
    if (opts.clientCerts) lines.push("require_certificate true", "use_identity_as_username true");
  }
  return `${lines.join("\n")}\n`;
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

type Running = LoggedChild;

function spawnBroker(configFile: string): Running {
  const run = spawnLogged(MOSQUITTO_BIN, ["-c", configFile]);
  // If the test process dies without stop(), the broker must not outlive it.
  const reap = () => run.child.kill("SIGKILL");
  process.once("exit", reap);
  run.child.once("exit", () => process.off("exit", reap));
  return run;
}

async function waitUntilListening(port: number, run: Running): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  // Probes once more after the deadline: a stalled test process must not skip the last look.
  for (let last = false; !last; ) {
    last = Date.now() >= deadline;
    if (exited(run.child))
      throw new Error(
        `mosquitto exited (${run.child.exitCode ?? run.child.signalCode}) before listening on 127.0.0.1:${port}:\n${run.output()}`,
      );
    if (await acceptsConnections(port)) return;
    if (!last) await delay(50);
  }
  throw new Error(
    `mosquitto did not listen on 127.0.0.1:${port} within ${READY_TIMEOUT_MS / 1000} s:\n${run.output()}`,
  );
}

async function terminate(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  const exit = once(child, "exit");
  child.kill("SIGTERM");
  const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exit;
  clearTimeout(killer);
}

/** Writes the config for `port` and runs mosquitto until it listens. */
async function serve(root: string, port: number, opts: MosquittoOptions, tls: ServerTls | undefined): Promise<Running> {
  const configFile = join(root, "mosquitto.conf");
  writeFileSync(configFile, configText(root, port, opts, tls));
  const run = spawnBroker(configFile);
  try {
    await waitUntilListening(port, run);
    return run;
  } catch (err) {
    await terminate(run.child);
    throw err;
  }
}

function makePasswordFile(file: string, user: { username: string; password: string }): void {
  try {
    execFileSync("mosquitto_passwd", ["-b", "-c", file, user.username, user.password], {
      stdio: ["ignore", "ignore", "pipe"],
    });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`mosquitto_passwd -b -c ${file} failed: ${stderr || (err as Error).message}`);
  }
}

export async function startMosquitto(opts: MosquittoOptions = {}): Promise<MosquittoFixture> {
  const root = mkdtempSync(join(tmpdir(), "fleetlet-mosquitto-"));
  let run: Running | undefined;
  const cleanup = async () => {
    if (run) await terminate(run.child);
    rmSync(root, { recursive: true, force: true });
  };
  try {
    const tls = opts.tls === true || opts.clientCerts === true;
    const ca = tls ? createTestCa(root) : undefined;
    const server = ca ? { ca: ca.cert, ...issueCert(root, ca, "localhost", "server") } : undefined;
    if (opts.passwordFile) makePasswordFile(join(root, "passwd"), opts.passwordFile);
    let port = 0;
    for (let attempt = 1; run === undefined; attempt++) {
      port = await freePort();
      try {
        run = await serve(root, port, opts, server);
      } catch (err) {
        // The free port may have been taken meanwhile by another test file.
        if (attempt >= 3 || !String((err as Error).message).includes("Address already in use")) throw err;
      }
    }
    let stopping: Promise<void> | undefined;
    return {
      url: `${tls ? "mqtts" : "mqtt"}://127.0.0.1:${port}`,
      port,
      caFile: ca?.cert ?? "",
      clientCert: (cn) => {
        if (!ca || !opts.clientCerts) throw new Error("clientCert() needs startMosquitto({ clientCerts: true })");
        return issueCert(root, ca, cn, "client");
      },
      restart: async () => {
        await terminate(run!.child);
        run = await serve(root, port, opts, server);
      },
      reload: () => {
        run?.child.kill("SIGHUP");
      },
      stop: () => {
        stopping ??= cleanup();
        return stopping;
      },
      kill9: () => {
        run?.child.kill("SIGKILL");
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
