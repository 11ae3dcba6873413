/** `fleetlet status`: the running agent's state, from its local status endpoint. */
import { request } from "node:http";
import type { ReportedState } from "../../schemas/reported.js";
import { FleetError } from "../errors.js";
import type { ParsedArgs } from "./args.js";
import type { CliContext } from "./context.js";
import { ago, formatTable } from "./output.js";

function getStatus(listen: string, socket: string | undefined): Promise<ReportedState> {
  const [host, port] = listen.split(":");
  return new Promise((resolve, reject) => {
    const req = request(
      socket ? { socketPath: socket, path: "/v1/status" } : { host, port: Number(port), path: "/v1/status" },
      (res) => {
        let body = "";
        res.on("data", (d) => {
          body += d;
        });
        res.on("end", () =>
          res.statusCode === 200
            ? resolve(JSON.parse(body))
            : reject(new FleetError("E_RUNTIME", `status endpoint answered HTTP ${res.statusCode}: ${body}`)),
        );
      },
    );
    req.on("error", (err) =>
      reject(
        new FleetError(
          "E_RUNTIME",
          `no agent answers on ${socket ?? listen}: ${err.message} (is \`fleetlet agent\` running?)`,
        ),
      ),
    );
    req.end();
  });
}

export async function statusCommand(ctx: CliContext, { options }: ParsedArgs): Promise<number> {
  const r = await getStatus(ctx.config.api.listen, undefined);
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
