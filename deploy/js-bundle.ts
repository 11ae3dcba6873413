/**
 * The JavaScript of a release bundle (scripts/dist.sh runs this on the
 * pinned Node, which strips the types):
 *   node deploy/js-bundle.ts OUTDIR
 * writes OUTDIR/fleetlet.js and OUTDIR/fleetctl.js, ES modules bundled by
 * esbuild from agent/ and schemas/ with got, lowdb, mqtt and zod, their
 * shared code in OUTDIR/chunks/, and OUTDIR/THIRD-PARTY-LICENSES with the
 * license of every package the files hold. Code splitting keeps the CLI's
 * dynamic imports lazy: the daemon's MQTT stack and the pull's HTTP stack
 * are separate chunks, loaded only by the commands that need them.
 * No source maps and no minifying: stack traces keep the source's names.
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build, type Metafile, type Plugin } from "esbuild";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const CLIS = ["fleetlet", "fleetctl"] as const;

/** `entry:NAME` is a two-line module that runs agent/cli/NAME.ts as bin/load.js does in a checkout. */
const entries: Plugin = {
  name: "fleetlet-entries",
  setup(b) {
    b.onResolve({ filter: /^entry:/ }, (args) => ({ path: args.path.slice("entry:".length), namespace: "entry" }));
    b.onLoad({ filter: /.*/, namespace: "entry" }, (args) => ({
      contents: `import { main } from "./agent/cli/${args.path}.ts";\nprocess.exitCode = await main(process.argv.slice(2));\n`,
      resolveDir: ROOT,
      loader: "js",
    }));
  },
};

/** The directory of each npm package that went into the bundle, by the paths esbuild read. */
function bundledPackages(meta: Metafile): string[] {
  const dirs = new Set<string>();
  for (const input of Object.keys(meta.inputs)) {
    const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (m) dirs.add(m[1]!);
  }
  return [...dirs].sort();
}

function licenseText(dir: string): string {
  const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)(\.(md|txt))?$/i.test(f));
  return file ? readFileSync(join(dir, file), "utf8").trim() : "(the package has no license file)";
}

function thirdPartyLicenses(meta: Metafile): string {
  const sections = bundledPackages(meta).map((rel) => {
    const dir = join(ROOT, rel);
    const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
      name: string;
      version: string;
      license?: string;
    };
    return `== ${pkg.name} ${pkg.version} (${pkg.license ?? "no license field"}) ==\n\n${licenseText(dir)}\n`;
  });
  return `fleetlet's JavaScript (lib/) bundles these packages; their licenses follow.\n\n${sections.join("\n")}`;
}

async function main(outdir: string): Promise<void> {
  const result = await build({
    absWorkingDir: ROOT,
    entryPoints: CLIS.map((name) => ({ in: `entry:${name}`, out: name })),
    plugins: [entries],
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node24",
    outdir,
    chunkNames: "chunks/[name]-[hash]",
    // CommonJS packages (mqtt, ws) call require() for Node's modules; an ES module has none of its own.
    banner: {
      js: 'import { createRequire as __fleetletCreateRequire } from "node:module";\nconst require = __fleetletCreateRequire(import.meta.url);',
    },
    legalComments: "none",
    metafile: true,
    logLevel: "warning",
  });
  writeFileSync(join(outdir, "THIRD-PARTY-LICENSES"), thirdPartyLicenses(result.metafile));
}

const [outdir] = process.argv.slice(2);
if (!outdir) {
  process.stderr.write("usage: node deploy/js-bundle.ts OUTDIR\n");
  process.exit(2);
}
await main(resolve(outdir));
