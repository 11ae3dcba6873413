/**
 * How the agent and pull benches start `fleetlet`, from their options:
 *   --bundle             the release bundle's JavaScript (deploy/js-bundle.ts, one
 *                        file per CLI and shared chunks) instead of dist/'s modules,
 *                        under the Node flags and the malloc tunable its launcher
 *                        (deploy/launcher.sh) gives
 *   --agent-flags "F…"   Node flags for fleetlet's processes only (not the bench, not
 *                        the bare node or the other tools it is compared with)
 *   --agent-env K=V      an environment variable for fleetlet only (repeatable)
 * The agent still adds its own flags (agent/system/process-memory.ts) unless
 * these name them.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BULK_MALLOC_MARK } from "../../agent/system/process-memory.js";
import { twoMiBHugePages } from "../support/huge-pages.js";

// From build/test/bench/ as from test/bench/: the top of the project.
const ROOT = new URL("../../../", import.meta.url).pathname;

export interface AgentLaunch {
  /** The node flags and script to run (`fleetlet`'s CLI), before its arguments. */
  argv: string[];
  env: NodeJS.ProcessEnv;
  /** For the bench's report. */
  describe: string;
}

function bundle(work: string): string {
  const dir = join(work, "bundle");
  const r = spawnSync(process.execPath, [join(ROOT, "deploy/js-bundle.ts"), join(dir, "lib")], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`deploy/js-bundle.ts failed: ${r.stderr || r.error}`);
  const version = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "package.json"),
    JSON.stringify({ name: "fleetlet", version, private: true, type: "module" }),
  );
  return join(dir, "lib", "fleetlet.js");
}

/** The value of deploy/launcher.sh's `name="…"` line. */
function launcherLine(name: string): string {
  const line = new RegExp(`^${name}="(.*)"$`, "m").exec(readFileSync(join(ROOT, "deploy/launcher.sh"), "utf8"));
  if (!line) throw new Error(`deploy/launcher.sh has no ${name}= line`);
  return line[1]!;
}

/** The Node flags a release bundle's bin/fleetlet runs every command with: its `node_flags=` line. */
export function launcherFlags(): string[] {
  return launcherLine("node_flags").split(/\s+/).filter(Boolean);
}

export function agentLaunch(args: string[], work: string): AgentLaunch {
  // --agent-flags come after the launcher's: V8 takes the last of a flag given twice.
  const flags: string[] = args.includes("--bundle") ? launcherFlags() : [];
  const env: NodeJS.ProcessEnv = { ...process.env };
  let script = join(ROOT, "bin/fleetlet.js");
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--agent-flags") flags.push(...(args[++i] ?? "").split(/\s+/).filter(Boolean));
    else if (args[i] === "--agent-env") {
      const [k, ...v] = (args[++i] ?? "").split("=");
      if (!k || !v.length) throw new Error(`--agent-env: expected K=V, got ${JSON.stringify(args[i])}`);
      env[k] = v.join("=");
    }
  }
  if (args.includes("--bundle")) {
    script = bundle(work);
    env.FLEETLET_NATIVE_DIR = join(ROOT, "native/build/Release");
    if (twoMiBHugePages()) {
      // As the launcher does: its `malloc_tunables=` after the caller's own, and the mark beside them.
      const tunables = launcherLine("malloc_tunables");
      env.GLIBC_TUNABLES = env.GLIBC_TUNABLES ? `${env.GLIBC_TUNABLES}:${tunables}` : tunables;
      env[BULK_MALLOC_MARK] = "1";
    }
  }
  const extraEnv = Object.keys(env).filter((k) => env[k] !== process.env[k] && k !== "FLEETLET_NATIVE_DIR");
  return {
    argv: [...flags, script],
    env,
    describe: `${args.includes("--bundle") ? "bundled lib/fleetlet.js" : "dist/ modules"}${flags.length ? `, flags ${flags.join(" ")}` : ""}${extraEnv.length ? `, env ${extraEnv.map((k) => `${k}=${env[k]}`).join(" ")}` : ""}`,
  };
}

/** The process's own CPU time so far (user + system; not its children's, such as the shims it reaps), in ms. */
export function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8")
    .replace(/^.*\) /, "")
    .split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]); // utime and stime, fields 14 and 15 of stat(5)
  return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
}
