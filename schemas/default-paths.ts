/**
 * The state root's and the config file's default paths, apart from the
 * config's schema: the CLI's entry reads the root before it loads zod
 * (agent/cli/startup-cache.ts).
 */

/** The device state directory unless `--root` or FLEETLET_ROOT says otherwise. */
export const DEFAULT_ROOT = "/var/lib/fleetlet";
/** The device config file unless `--config` or FLEETLET_CONFIG says otherwise. */
export const DEFAULT_CONFIG_PATH = "/etc/fleetlet/config.json";

/** The state root: `--root`'s value, else FLEETLET_ROOT, else DEFAULT_ROOT. */
export function resolveRoot(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return flag ?? env.FLEETLET_ROOT ?? DEFAULT_ROOT;
}
