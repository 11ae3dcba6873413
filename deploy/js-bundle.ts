/**
 * The JavaScript of a release bundle (scripts/dist.sh runs this on the
 * pinned Node, which strips the types):
 *   node deploy/js-bundle.ts OUTDIR
 * writes OUTDIR/fleetlet.js and OUTDIR/fleetctl.js, ES modules bundled by
 * esbuild from agent/ and schemas/ with lowdb, mqtt and zod, their
 * shared code in OUTDIR/chunks/, and OUTDIR/THIRD-PARTY-LICENSES with the
 * license of every package the files hold. Code splitting keeps the CLI's
 * dynamic imports lazy: the daemon's MQTT stack and the pull's HTTP stack
 * are separate chunks, loaded only by the commands that need them.
 * No source maps and no renaming: stack traces keep the source's names; the
 * whitespace and comments go (a module's source stays in the heap as long as
 * the module, and a comment's one character past Latin-1, an em dash, makes
 * V8 keep its whole chunk as two bytes a character).
 *
 * Node's modules are taken with process.getBuiltinModule, not an ES import:
 * on Node 24 an ES import of a built-in module reads every export it has, and
 * so runs its lazy getters (`node:http`'s WebSocket loads the whole of undici,
 * about 770 kB of source, and with it http2, worker_threads and assert): 14 MiB
 * of resident memory for `import { createServer } from "node:http"` against
 * 2 MiB for the module itself (measured, README "Memory").
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build, type Metafile, type Plugin } from "esbuild";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const CLIS = ["fleetlet", "fleetctl"] as const;

/**
 * `entry:NAME` is a small module that runs agent/cli/NAME.ts as bin/load.js
 * does in a checkout: `fleetlet` turns on the compile cache first
 * (agent/cli/startup-cache.ts), then imports the CLI, a chunk of its own.
 */
const entries: Plugin = {
  name: "fleetlet-entries",
  setup(b) {
    b.onResolve({ filter: /^entry:/ }, (args) => ({ path: args.path.slice("entry:".length), namespace: "entry" }));
    b.onLoad({ filter: /.*/, namespace: "entry" }, (args) => ({
      contents:
        args.path === "fleetlet"
          ? `import { startCompileCache } from "./agent/cli/startup-cache.ts";\nstartCompileCache(process.argv.slice(2));\nconst { main } = await import("./agent/cli/fleetlet.ts");\nprocess.exitCode = await main(process.argv.slice(2));\n`
          : `import { main } from "./agent/cli/${args.path}.ts";\nprocess.exitCode = await main(process.argv.slice(2));\n`,
      resolveDir: ROOT,
      loader: "js",
    }));
  },
};

/**
 * `import … from "node:X"` becomes a CommonJS module whose exports are
 * process.getBuiltinModule("node:X"): esbuild reads the names it imports at
 * their use (`import_node_http.createServer`), so no other export is touched.
 */
const builtins: Plugin = {
  name: "fleetlet-builtins",
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) =>
      args.kind === "import-statement"
        ? { path: args.path, namespace: "builtin" }
        : { path: args.path, external: true },
    );
    b.onLoad({ filter: /.*/, namespace: "builtin" }, (args) => ({
      contents: `module.exports = process.getBuiltinModule(${JSON.stringify(args.path)});\n`,
      loader: "js",
    }));
  },
};

/**
 * zod's `locales` namespace (64 languages, 340 kB of source) becomes English
 * alone: fleetlet's messages are English, and nothing calls z.config() with
 * another locale. zod registers English as its default by itself.
 */
const zodEnglishOnly: Plugin = {
  name: "fleetlet-zod-english",
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      /node_modules\/zod\//.test(args.importer)
        ? { path: join(dirname(args.importer), "../locales/en.js"), namespace: "zod-locales" }
        : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "zod-locales" }, (args) => ({
      contents: `export { default as en } from ${JSON.stringify(args.path)};\n`,
      resolveDir: dirname(args.path),
      loader: "js",
    }));
  },
};

/** The directory of each npm package that went into the bundle, by the paths esbuild read. */
function bundledPackages(meta: Metafile): string[] {
  const dirs = new Set<string>();
  for (const input of Object.keys(meta.inputs)) {
    // A plugin's module is named `namespace:/absolute/path`.
    const m = /^(?:[a-z-]+:)?(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (m) dirs.add(relative(ROOT, resolve(ROOT, m[1]!)));
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
    plugins: [entries, builtins, zodEnglishOnly],
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
    minifyWhitespace: true,
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
