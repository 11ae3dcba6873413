/**
 * Runs one CNI plugin the way a CNI runtime does (the CNI spec, version
 * 1.0.0): the operation and the container in CNI_* variables, the network
 * configuration on stdin, the result or an error object on stdout.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { FleetError } from "../errors.js";

export type CniCommand = "ADD" | "CHECK" | "DEL";

export interface CniCall {
  /** Where the plugins are: /usr/lib/cni on Debian. */
  pluginDir: string;
  plugin: string;
  command: CniCommand;
  containerId: string;
  /** The pinned namespace; "" for a DEL after it was lost. */
  netns: string;
  ifname: string;
  /** The plugin's configuration, with name, cniVersion and any prevResult or runtimeConfig. */
  config: Record<string, unknown>;
  /** Names the network and step in an error. */
  what: string;
}

/** The plugin's result (ADD), or {} (CHECK, DEL); a FleetError with the plugin's own message otherwise. */
export function runCniPlugin(call: CniCall): Promise<Record<string, unknown>> {
  const env = {
    PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
    CNI_COMMAND: call.command,
    CNI_CONTAINERID: call.containerId,
    CNI_NETNS: call.netns,
    CNI_IFNAME: call.ifname,
    CNI_PATH: call.pluginDir,
  };
  return new Promise((resolve, reject) => {
    const child = execFile(
      join(call.pluginDir, call.plugin),
      [],
      { env, maxBuffer: 1 << 20 },
      (err, stdout, stderr) => {
        const out = parseOutput(stdout);
        if (!err) return resolve(out ?? {});
        const why =
          typeof out?.msg === "string" ? `${out.msg}${out.details ? ` (${out.details})` : ""}` : stderr.trim();
        const e = err as NodeJS.ErrnoException;
        // A plugin that is not there set nothing up: there is nothing for its DEL to undo.
        if (e.code === "ENOENT" && call.command === "DEL") return resolve({});
        const reason = e.code === "ENOENT" ? "the plugin is not installed (Debian: containernetworking-plugins)" : why;
        reject(
          new FleetError("E_RUNTIME", `${call.what}: CNI ${call.plugin} ${call.command}: ${reason || err.message}`),
        );
      },
    );
    child.stdin?.end(JSON.stringify(call.config));
  });
}

function parseOutput(stdout: string): Record<string, unknown> | undefined {
  if (!stdout.trim()) return undefined;
  try {
    return JSON.parse(stdout) as Record<string, unknown>;
  } catch {
    // Not JSON: the caller reports stderr or the exit status instead, which say more.
    return undefined;
  }
}
