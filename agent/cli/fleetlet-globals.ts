/** `fleetlet`'s global options, apart from its commands: the entry reads `--root` before it loads them (startup-cache.ts). */
import type { OptionSpec } from "./args.js";

/** Taken before the command word and anywhere among a command's options (not after `--` or `run`'s IMAGE). */
export const FLEETLET_GLOBALS: OptionSpec[] = [
  { name: "root", type: "string" },
  { name: "config", type: "string" },
  { name: "help", type: "boolean" },
  { name: "version", type: "boolean" },
];
