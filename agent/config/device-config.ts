/**
 * Device config: the JSON file, then FLEETLET_* environment overrides, then
 * validation. Errors name the field, e.g. "mqtt.url: expected mqtt://, …".
 */
import { readFileSync } from "node:fs";
import { DEFAULT_CONFIG_PATH, DEFAULT_ROOT, type DeviceConfig, deviceConfig } from "../../schemas/config.js";
import { resolveRoot } from "../../schemas/default-paths.js";
import { formatIssues } from "../../schemas/format-issues.js";
import { FleetError, isErrno } from "../errors.js";

export { DEFAULT_CONFIG_PATH, DEFAULT_ROOT, resolveRoot };

/** FLEETLET_DEVICE_ID, FLEETLET_MQTT_URL, …: env name → config path. */
const ENV_OVERRIDES: Record<string, string[]> = {
  FLEETLET_DEVICE_ID: ["deviceId"],
  FLEETLET_MQTT_URL: ["mqtt", "url"],
  FLEETLET_MQTT_USERNAME: ["mqtt", "username"],
  FLEETLET_MQTT_PASSWORD: ["mqtt", "password"],
  FLEETLET_API_LISTEN: ["api", "listen"],
  FLEETLET_API_SOCKET: ["api", "socket"],
  FLEETLET_API_TOKEN: ["api", "token"],
  FLEETLET_DEV_ROOT: ["devRoot"],
};

function applyEnv(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): void {
  for (const [name, path] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value === undefined) continue;
    let node = raw;
    for (const key of path.slice(0, -1)) {
      if (typeof node[key] !== "object" || node[key] === null) node[key] = {};
      node = node[key] as Record<string, unknown>;
    }
    node[path.at(-1)!] = value;
  }
  if (env.FLEETLET_GROUPS !== undefined) raw.groups = env.FLEETLET_GROUPS.split(",").filter(Boolean);
}

/**
 * Loads the config. An explicit path must exist; the default path may be
 * absent (commands such as `fleetlet run --rootfs` need no config).
 */
export function loadDeviceConfig(path: string | undefined, env: NodeJS.ProcessEnv = process.env): DeviceConfig {
  const file = path ?? env.FLEETLET_CONFIG ?? DEFAULT_CONFIG_PATH;
  let raw: Record<string, unknown> = {};
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    if (!(isErrno(err, "ENOENT") && path === undefined && env.FLEETLET_CONFIG === undefined)) {
      const reason = err instanceof SyntaxError ? `not valid JSON (${err.message})` : (err as Error).message;
      throw new FleetError("E_INVALID_CONFIG", `config ${file}: ${reason}`);
    }
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new FleetError("E_INVALID_CONFIG", `config ${file}: expected a JSON object`);
  }
  applyEnv(raw, env);
  const parsed = deviceConfig.safeParse(raw);
  if (!parsed.success) throw new FleetError("E_INVALID_CONFIG", `config ${file}: ${formatIssues(parsed.error)}`);
  return parsed.data;
}
