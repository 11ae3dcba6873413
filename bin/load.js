// Loads the compiled CLI, with a clear message when the build step has not run.
// `fleetlet` turns on Node's compile cache first (agent/cli/startup-cache.ts),
// so that the modules loaded after it come from the cache.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export async function runCli(name) {
  const entry = fileURLToPath(new URL(`../dist/agent/cli/${name}.js`, import.meta.url));
  if (!existsSync(entry)) {
    process.stderr.write(`${name}: not built yet (${entry} is missing); run \`npm ci\` or \`npm run build\` first\n`);
    process.exit(125);
  }
  if (name === "fleetlet") {
    const { startCompileCache } = await import(new URL("../dist/agent/cli/startup-cache.js", import.meta.url).href);
    startCompileCache(process.argv.slice(2));
  }
  const cli = await import(entry);
  process.exitCode = await cli.main(process.argv.slice(2));
}
