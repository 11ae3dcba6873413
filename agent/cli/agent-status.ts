/**
 * `fleetlet status`: the running agent's state, from its local status
 * endpoint: the unix socket `api.socket` first, then TCP `api.listen` when
 * the socket is missing or nobody answers on it.
 */
import { request } from "node:http";
import type { DeviceConfig } from "../../schemas/config.js";
import type { ReportedState } from "../../schemas/reported.js";
import { parseListen } from "../api/status-server.js";
import { FleetError, isErrno } from "../errors.js";
import type { ParsedArgs } from "./args.js";
import type { CliContext } from "./context.js";
import { ago, formatTable } from "./output.js";

type Target = { socketPath: string } | { host: string; port: number };

/** No agent at that address (as opposed to an agent that answered with an error). */
const unreachable = (err: unknown) => ["ENOENT", "ECONNREFUSED", "EACCES", "ENOTSOCK"].some((c) => isErrno(err, c));

function fetchStatus(target: Target, headers: Record<string, string>): Promise<ReportedState> {
  return new Promise((resolve, reject) => {
    const req = request({ ...target, path: "/v1/status", headers }, (res) => {
      let body = "";
      res.on("data", (d) => {
        body += d;
      });
      res.on("end", () =>
        res.statusCode === 200
          ? resolve(JSON.parse(body))
          : reject(new FleetError("E_RUNTIME", `status endpoint answered HTTP ${res.statusCode}: ${body}`)),
      );
    });
    req.on("error", reject);
    req.end();
  });
}

/**
 * The token goes only to the socket: its root-only directory vouches for who
 * listens there, while a TCP port can be held by any process on the host,
 * which must not be handed the token (and /v1/status needs none).
 */
async function getStatus(api: DeviceConfig["api"]): Promise<ReportedState> {
  const failures: string[] = [];
  const targets: [string, Target, Record<string, string>][] = [];
  if (api.socket)
    targets.push([api.socket, { socketPath: api.socket }, api.token ? { authorization: `Bearer ${api.token}` } : {}]);
  if (api.listen) targets.push([api.listen, parseListen(api.listen), {}]);
  for (const [where, target, headers] of targets) {
    try {
      return await fetchStatus(target, headers);
    } catch (err) {
      if (err instanceof FleetError) throw err;
      if (!unreachable(err)) throw new FleetError("E_RUNTIME", `status endpoint ${where}: ${(err as Error).message}`);
      failures.push(`${where} (${(err as Error).message})`);
    }
  }
  throw new FleetError(
    "E_RUNTIME",
    targets.length === 0
      ? "status: neither api.socket nor api.listen is set in the device config"
      : `no agent answers on ${failures.join(" or ")}: is \`fleetlet agent\` running?`,
  );
}

export async function statusCommand(ctx: CliContext, { options }: ParsedArgs): Promise<number> {
  const r = await getStatus(ctx.config.api);
  if (options.json) {
    process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    return 0;
  }
  process.stdout.write(
    `device ${r.deviceId}: deployment ${r.deployment ?? "-"} generation ${r.generation ?? "-"}, ${r.phase}${r.lastError ? ` (${r.lastError.code}: ${r.lastError.message})` : ""}\n`,
  );
  const rows = Object.entries(r.services).map(([name, s]) => [
    name,
    s.state,
    s.health,
    String(s.pid ?? "-"),
    String(s.restarts),
    `${(s.memoryBytes / 1048576).toFixed(1)} MiB`,
    `${s.cpuSeconds.toFixed(1)} s`,
    ago(s.startedAt),
  ]);
  process.stdout.write(
    formatTable(["SERVICE", "STATE", "HEALTH", "PID", "RESTARTS", "MEMORY", "CPU", "STARTED"], rows),
  );
  return 0;
}
