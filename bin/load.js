// Loads the compiled CLI, with a clear message when the build step has not run.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export async function runCli(name) {
  const entry = fileURLToPath(new URL(`../dist/agent/cli/${name}.js`, import.meta.url));
  if (!existsSync(entry)) {
    process.stderr.write(`${name}: not built yet (${entry} is missing); run \`npm ci\` or \`npm run build\` first\n`);
    process.exit(125);
  }
  const cli = await import(entry);
  process.exitCode = await cli.main(process.argv.slice(2));
}
