/** Runs the real `fleetlet` CLI as a child process, as a user would. */
import { type ChildProcess, type SpawnSyncReturns, spawn, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

export const FLEETLET_BIN = fileURLToPath(new URL("../../bin/fleetlet.js", import.meta.url));

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function fleetlet(root: string, args: string[], opts: { timeoutMs?: number } = {}): CliResult {
  const r: SpawnSyncReturns<string> = spawnSync(process.execPath, [FLEETLET_BIN, "--root", root, ...args], {
    encoding: "utf8",
    timeout: opts.timeoutMs ?? 60_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function fleetletAsync(root: string, args: string[]) {
  return spawn(process.execPath, [FLEETLET_BIN, "--root", root, ...args], { stdio: ["ignore", "pipe", "pipe"] });
}

/** Resolves once `fleetlet agent` (a child with piped stderr) says it has started; rejects, with its stderr, if it exits first. */
export function agentStarted(agent: ChildProcess): Promise<void> {
  let stderr = "";
  return new Promise<void>((resolve, reject) => {
    agent.stderr!.on("data", (d) => {
      stderr += d;
      if (stderr.includes("fleetlet agent ")) resolve();
    });
    agent.once("exit", (code, signal) => reject(new Error(`the agent exited ${code ?? signal}: ${stderr}`)));
  });
}

/** `fleetlet agent` as a child process, its stderr drained so it never blocks on a full pipe. */
export function spawnAgent(root: string, config: string, opts: { heartbeatSeconds?: number } = {}): ChildProcess {
  const heartbeat = opts.heartbeatSeconds === undefined ? [] : ["--heartbeat", String(opts.heartbeatSeconds)];
  const child = spawn(process.execPath, [FLEETLET_BIN, "--root", root, "--config", config, "agent", ...heartbeat], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  child.stderr!.resume();
  return child;
}

export const FLEETCTL_BIN = fileURLToPath(new URL("../../bin/fleetctl.js", import.meta.url));

export function fleetctl(args: string[], opts: { timeoutMs?: number } = {}): CliResult {
  const r = spawnSync(process.execPath, [FLEETCTL_BIN, ...args], {
    encoding: "utf8",
    timeout: opts.timeoutMs ?? 120_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * The same as fleetlet()/fleetctl(), without blocking this process: needed
 * whenever a server the command talks to (a token issuer, a proxy) runs in
 * the test process itself.
 */
export function runCli(
  bin: "fleetlet" | "fleetctl",
  args: string[],
  opts: { timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin === "fleetlet" ? FLEETLET_BIN : FLEETCTL_BIN, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 120_000);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}
