/**
 * `fleetlet agent`: the daemon. Wires the agent to the MQTT session (desired
 * documents in, reported state and events out) and to the local status
 * endpoint, adopts the containers a previous agent left running, and on
 * SIGTERM stops watching without stopping them (systemd's KillMode=process).
 */
import { request } from "node:http";
import type { ReportedState } from "../../schemas/reported.js";
import { startStatusServer } from "../api/status-server.js";
import { FleetError } from "../errors.js";
import type { Agent } from "../reconcile/agent.js";
import { desiredHandler } from "../reconcile/desired-sources.js";
import { loadNative } from "../system/native.js";
import { MqttSession } from "../transport/mqtt-session.js";
import { AGENT_VERSION, createAgent } from "./agent-commands.js";
import { parseArgs } from "./args.js";
import type { CliContext } from "./context.js";
import { ago, formatTable } from "./output.js";

/** Tells systemd (Type=notify) how the agent stands; a no-op elsewhere, a warning if it fails. */
function notifySystemd(state: string): void {
  try {
    loadNative().core.sdNotify(state);
  } catch (err) {
    process.stderr.write(`fleetlet: warning: could not notify systemd: ${(err as Error).message}\n`);
  }
}

export async function agentCommand(ctx: CliContext, argv: string[]): Promise<number> {
  // Listened for from the start: a stop during start-up must not kill the agent by the signal's default action.
  const stopRequested = new Promise<void>((resolve) => {
    process.once("SIGTERM", () => resolve());
    process.once("SIGINT", () => resolve());
  });
  const { options } = parseArgs(argv, [{ name: "heartbeat", type: "string" }]);
  const { config } = ctx;
  if (!config.deviceId)
    throw new FleetError(
      "E_INVALID_CONFIG",
      "deviceId: the agent needs a device id (in the config file or FLEETLET_DEVICE_ID)",
    );
  const heartbeatMs = Number(options.heartbeat ?? 30) * 1000;
  let session: MqttSession | undefined;
  let agent: Agent | undefined;
  agent = await createAgent(
    ctx,
    (e) => session?.publishEvent(e),
    (settled) => agent && session?.publishReported(agent.reported(), { settled }),
  );
  const a = agent;
  const server = await startStatusServer({
    listen: config.api.listen,
    socket: config.api.socket,
    ...(config.api.token ? { token: config.api.token } : {}),
    source: {
      reported: () => a.reported(),
      metrics: () => a.metrics,
      logs: (s, t) => a.logs(s, t),
      restart: (s) => a.restartService(s),
    },
  });
  const onDesired = desiredHandler(a, config.groups, config.mqtt?.prefix ?? "fleet");
  if (config.mqtt) {
    session = new MqttSession({
      deviceId: config.deviceId,
      groups: config.groups,
      mqtt: config.mqtt,
      agentVersion: AGENT_VERSION,
      onDesired,
    });
  }
  await a.reattach();
  try {
    await session?.start({ timeoutMs: 5000 });
  } catch (err) {
    // A broker setting is wrong (CA, certificate, credentials): the services
    // still need supervising, so the agent runs on without the broker.
    const e = err instanceof FleetError ? err : new FleetError("E_INVALID_CONFIG", (err as Error).message);
    a.lastError = e.toJSON();
    process.stderr.write(`fleetlet: ${e.message} [${e.code}]; running without the broker\n`);
    session = undefined;
  }
  session?.publishReported(a.reported());
  const heartbeat = setInterval(() => session?.publishReported(a.reported()), heartbeatMs);
  notifySystemd(
    `READY=1\nSTATUS=device ${config.deviceId}: ${Object.keys(a.reported().services).length} service(s) adopted${session ? "" : ", no broker"}`,
  );
  process.stderr.write(
    `fleetlet agent ${AGENT_VERSION}: device ${config.deviceId}, state in ${ctx.root}, status on ${config.api.listen}${config.mqtt ? `, broker ${config.mqtt.url}` : ", no broker configured"}\n`,
  );
  await stopRequested;
  clearInterval(heartbeat);
  notifySystemd("STOPPING=1");
  await a.stop();
  await session?.stop();
  await server.close();
  return 0;
}

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

export async function statusCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const { options } = parseArgs(argv, [{ name: "json", type: "boolean" }]);
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
