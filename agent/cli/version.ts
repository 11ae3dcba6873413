/**
 * fleetlet's version: the one in package.json, found by walking up from this
 * file (agent/cli/ in the checkout, dist/agent/cli/ when built or installed).
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { FleetError } from "../errors.js";

let version: string | undefined;

export function fleetletVersion(): string {
  version ??= readVersion();
  return version;
}

function readVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const file = join(dir, "package.json");
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, "utf8")) as { name?: unknown; version?: unknown };
      if (pkg.name === "fleetlet" && typeof pkg.version === "string") return pkg.version;
    }
    dir = dirname(dir);
  }
  throw new FleetError(
    "E_INTERNAL",
    "version: no package.json of fleetlet above the CLI's files; the installed tree is incomplete",
  );
}
