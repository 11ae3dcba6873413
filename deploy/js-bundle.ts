/**
 * The JavaScript of a release bundle (scripts/dist.sh runs this on the
 * pinned Node, which strips the types):
 *   node deploy/js-bundle.ts OUTDIR
 * writes OUTDIR/fleetlet.js and OUTDIR/fleetctl.js, ES modules bundled by
 * esbuild from agent/ and schemas/ with lowdb, mqtt and zod, their
 * shared code in OUTDIR/chunks/, and OUTDIR/THIRD-PARTY-LICENSES with the
 * license of every package the files hold. Code splitting keeps the CLI's
 * dynamic imports lazy: the daemon's MQTT stack and the pull's HTTP stack
 * are separate chunks, loaded only by the commands that need them, and
 * mqtt.js is trimmed of what the daemon never uses (mqttTrim).
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
 * `import … from "node:X"` becomes a CommonJS module with a getter for each
 * export of node:X (its names read from this Node at build time) that takes
 * process.getBuiltinModule("node:X") at the first use of any: esbuild reads
 * the names it imports at their use (`import_node_http.createServer`), so no
 * other export is touched, and a module is loaded only when code first uses
 * it, not when the chunk that imports it is. The daemon imports, through
 * code it shares with the CLI, modules that only some commands or only a
 * pull use (zlib, for one).
 */
const builtins: Plugin = {
  name: "fleetlet-builtins",
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) =>
      args.kind === "import-statement"
        ? { path: args.path, namespace: "builtin" }
        : { path: args.path, external: true },
    );
    b.onLoad({ filter: /.*/, namespace: "builtin" }, (args) => {
      const id = JSON.stringify(args.path);
      const names = Object.getOwnPropertyNames(process.getBuiltinModule(args.path));
      const getters = names.map(
        (n) => `${JSON.stringify(n)}: { enumerable: true, get: () => load()[${JSON.stringify(n)}] }`,
      );
      return {
        contents: `let m;\nconst load = () => (m ??= process.getBuiltinModule(${id}));\nmodule.exports = Object.defineProperties({}, {\n${getters.join(",\n")}\n});\n`,
        loader: "js",
      };
    });
  },
};

/**
 * zod's `locales` namespace (64 languages, 340 kB of source) becomes English
 * alone, wherever zod's own modules import it: fleetlet's messages are
 * English, and schemas/zod.ts sets that locale itself.
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

/**
 * What the daemon's MQTT stack (mqtt.js 5) loads and never uses, left out of
 * the bundle's resident memory by the mqttTrim plugin:
 *
 * - mqtt.js requires every transport at its first connect: WebSockets (ws,
 *   with zlib and https), TLS (node:tls, crypto's keys and contexts) and TCP.
 *   Each is required here on its first use instead, so a plaintext broker
 *   never loads TLS nor a TLS broker WebSockets.
 * - SOCKS (socks, ip-address, smart-buffer; node:dns and assert) is required
 *   only when mqtt's socksProxy option is set, which fleetlet never sets.
 * - worker-timers (a browser's timers in a Web Worker) only when a client
 *   asks for them (timerVariant "worker"; fleetlet never does).
 * - readable-stream, a copy of Node 18's streams for browsers, is Node's own
 *   node:stream, which the daemon has loaded anyway.
 * - Its browser check reads `navigator` when it loads, to tell React Native
 *   apart; in Node that global loads Node's navigator module (0.2 MiB).
 * - lru-cache (its topic aliases) reads `performance` when it loads, for a
 *   clock; in Node that global loads perf_hooks (1.4 MiB). A clock of
 *   process.hrtime serves it the same: a monotonic count of milliseconds.
 *
 * Each rewrite names the exact text it replaces: a new mqtt.js or lru-cache
 * whose text differs fails the bundle's build rather than silently loading it
 * all again.
 */

interface Rewrite {
  /** The file, under node_modules/. */
  file: string;
  from: string;
  to: string;
}

/** A transport's module, required when the connection first asks for it. */
const lazyTransport = (proto: string, mod: string, member: string) =>
  `Object.defineProperty(protocols, '${proto}', { enumerable: true, configurable: true, get: () => require('./${mod}').${member} });`;

const REWRITES: readonly Rewrite[] = [
  {
    file: "mqtt/build/lib/connect/index.js",
    from: `            protocols.ws = require('./ws').streamBuilder;
            protocols.wss = require('./ws').streamBuilder;
            protocols.mqtt = require('./tcp').default;
            protocols.tcp = require('./tcp').default;
            protocols.ssl = require('./tls').default;
            protocols.tls = protocols.ssl;
            protocols.mqtts = require('./tls').default;`,
    to: [
      lazyTransport("ws", "ws", "streamBuilder"),
      lazyTransport("wss", "ws", "streamBuilder"),
      lazyTransport("mqtt", "tcp", "default"),
      lazyTransport("tcp", "tcp", "default"),
      lazyTransport("ssl", "tls", "default"),
      lazyTransport("tls", "tls", "default"),
      lazyTransport("mqtts", "tls", "default"),
    ].join("\n"),
  },
  ...["mqtt/build/lib/connect/tcp.js", "mqtt/build/lib/connect/tls.js"].flatMap((file) => [
    { file, from: `const socks_1 = __importDefault(require("./socks"));`, to: "" },
    { file, from: "(0, socks_1.default)(", to: `(0, __importDefault(require("./socks")).default)(` },
  ]),
  {
    file: "mqtt/build/lib/get-timer.js",
    from: `const worker_timers_1 = require("worker-timers");`,
    to: "",
  },
  {
    file: "mqtt/build/lib/get-timer.js",
    from: `    set: worker_timers_1.setInterval,
    clear: worker_timers_1.clearInterval,`,
    to: `    set: (func, time) => require("worker-timers").setInterval(func, time),
    clear: (timerId) => require("worker-timers").clearInterval(timerId),`,
  },
  {
    file: "mqtt/build/lib/is-browser.js",
    from: `const isReactNativeEnv = () => typeof navigator !== 'undefined' && navigator.product === 'ReactNative';`,
    to: "const isReactNativeEnv = () => false;",
  },
  {
    file: "lru-cache/dist/commonjs/index.js",
    from: `const perf = typeof performance === 'object' &&
    performance &&
    typeof performance.now === 'function'
    ? performance
    : Date;`,
    to: "const perf = { now: () => Number(process.hrtime.bigint()) / 1e6 };",
  },
];

/** A package's source with REWRITES applied; throws naming the file and text when one no longer matches. */
function rewritten(path: string, rewrites: readonly Rewrite[]): string {
  let text = readFileSync(path, "utf8");
  for (const r of rewrites) {
    const at = text.indexOf(r.from);
    if (at < 0 || text.indexOf(r.from, at + 1) >= 0)
      throw new Error(`mqtt-trim: ${path} no longer holds (exactly once) the text to rewrite: ${r.from.slice(0, 60)}…`);
    text = text.slice(0, at) + r.to + text.slice(at + r.from.length);
  }
  return text;
}

const mqttTrim: Plugin = {
  name: "fleetlet-mqtt-trim",
  setup(b) {
    const byFile = new Map<string, Rewrite[]>();
    for (const r of REWRITES) byFile.set(r.file, [...(byFile.get(r.file) ?? []), r]);
    const files = new RegExp(`node_modules/(${[...byFile.keys()].join("|").replaceAll(".", "\\.")})$`);
    b.onLoad({ filter: files }, (args) => {
      const file = files.exec(args.path)![1]!;
      return { contents: rewritten(args.path, byFile.get(file)!), loader: "js" };
    });
    // Its importers are mqtt, mqtt-packet and bl.
    b.onResolve({ filter: /^readable-stream$/ }, () => ({ path: "node:stream", namespace: "builtin" }));
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
    plugins: [entries, builtins, zodEnglishOnly, mqttTrim],
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
