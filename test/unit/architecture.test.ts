/**
 * The shape of the code, checked on every run: imports follow the data flow
 * (docs/architecture.md), no module imports itself back through others, the
 * network and storage libraries stay in the one layer each that owns them,
 * and files and functions stay small enough to read.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { LAYERS, layerOf, PACKAGE_OWNERS } from "../support/layers.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const SHIPPED = ["agent", "schemas"];
const MAX_FILE_LINES = 300;
const MAX_FUNCTION_LINES = 60;
/** A reason, written where the reader meets the size: in the file's header or above the function. */
const LONG_REASON = /@long\s+\S/;

function sourceFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir)).flatMap((name) => {
    const rel = join(dir, name);
    if (statSync(join(ROOT, rel)).isDirectory()) return sourceFiles(rel);
    return rel.endsWith(".ts") ? [rel] : [];
  });
}

const files = SHIPPED.flatMap(sourceFiles);

interface Edge {
  from: string;
  to: string;
}

/** Every import of a file (static, type-only, re-export and dynamic), resolved to a path or kept as a package name. */
function importsOf(file: string): { local: string[]; packages: string[] } {
  const info = ts.preProcessFile(readFileSync(join(ROOT, file), "utf8"), true, true);
  const local: string[] = [];
  const packages: string[] = [];
  for (const { fileName } of info.importedFiles) {
    if (fileName.startsWith("."))
      local.push(relative(ROOT, resolve(ROOT, dirname(file), fileName)).replace(/\.js$/, ".ts"));
    else if (!fileName.startsWith("node:")) packages.push(fileName.split("/")[0]!);
  }
  return { local, packages };
}

const graph = new Map(files.map((f) => [f, importsOf(f)]));

/** An import from one layer into another that the first may not use. */
function againstFlow({ from, to }: Edge): boolean {
  const a = layerOf(from)!;
  const b = layerOf(to);
  return b === undefined || (a !== b && !LAYERS[a].includes(b));
}
const edges: Edge[] = [...graph].flatMap(([from, { local }]) => local.map((to) => ({ from, to })));

/** Strongly connected components with more than one file (or a file importing itself): Tarjan's algorithm. */
function cycles(graph: Map<string, { local: string[] }>): string[][] {
  let index = 0;
  const indices = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    indices.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)?.local ?? []) {
      if (!graph.has(w)) continue;
      if (!indices.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, indices.get(w)!));
    }
    if (low.get(v) === indices.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || graph.get(v)!.local.includes(v)) found.push(scc.sort());
    }
  };
  for (const f of graph.keys()) if (!indices.has(f)) visit(f);
  return found;
}

/** Functions longer than the limit, as "file:line name (N lines)", unless a comment above says why. */
function longFunctions(file: string): string[] {
  const text = readFileSync(join(ROOT, file), "utf8");
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: string[] = [];
  const visit = (node: ts.Node) => {
    if (ts.isFunctionLike(node) && "body" in node && node.body) {
      const start = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
      const end = sf.getLineAndCharacterOfPosition(node.end).line;
      const comments = ts.getLeadingCommentRanges(text, node.getFullStart()) ?? [];
      const reasoned = comments.some((c) => LONG_REASON.test(text.slice(c.pos, c.end)));
      if (end - start + 1 > MAX_FUNCTION_LINES && !reasoned) {
        const name = node.name?.getText(sf) ?? "(anonymous)";
        out.push(`${file}:${start + 1} ${name} (${end - start + 1} lines)`);
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

describe("the architecture", () => {
  it("knows the layer of every shipped file", () => {
    expect(files.filter((f) => layerOf(f) === undefined)).toEqual([]);
    expect(files.length).toBeGreaterThan(50);
  });

  it("imports only along the data flow: each layer imports only the layers below it", () => {
    const against = edges
      .filter(againstFlow)
      .map(
        ({ from, to }) =>
          `${from} -> ${to} (${layerOf(from)} may import ${LAYERS[layerOf(from)!].join(", ") || "nothing"})`,
      );
    expect(against).toEqual([]);
  });

  it("has no import cycle, between layers or between files", () => {
    expect(cycles(graph)).toEqual([]);
  });

  it("keeps each library in the layer that owns it", () => {
    const misplaced = [...graph].flatMap(([file, { packages }]) =>
      packages
        .filter((p) => PACKAGE_OWNERS[p] !== undefined && !PACKAGE_OWNERS[p]!.includes(layerOf(file)!))
        .map((p) => `${file} imports ${p} (only ${PACKAGE_OWNERS[p]!.join(", ")} may)`),
    );
    expect(misplaced).toEqual([]);
  });

  it("takes zod as zod/mini, through schemas/zod.ts only (classic zod would bundle whole: 305 kB, 5 MiB resident)", () => {
    const zodImports = files.flatMap((file) =>
      ts
        .preProcessFile(readFileSync(join(ROOT, file), "utf8"), true, true)
        .importedFiles.filter(({ fileName }) => fileName === "zod" || fileName.startsWith("zod/"))
        .map(({ fileName }) => `${file}: ${fileName}`),
    );
    expect([...new Set(zodImports)].sort()).toEqual([
      "schemas/zod.ts: zod/mini",
      "schemas/zod.ts: zod/v4/locales/en.js",
    ]);
  });

  it("ships no test code: nothing shipped imports from test/", () => {
    expect(edges.filter(({ to }) => to.startsWith("test/")).map((e) => `${e.from} -> ${e.to}`)).toEqual([]);
  });

  it(`keeps files under ${MAX_FILE_LINES} lines unless the header says why`, () => {
    const long = files.filter((f) => {
      const text = readFileSync(join(ROOT, f), "utf8");
      const header = text.slice(0, text.indexOf("*/") + 2);
      return text.split("\n").length > MAX_FILE_LINES && !LONG_REASON.test(header);
    });
    expect(long).toEqual([]);
  });

  it(`keeps functions under ${MAX_FUNCTION_LINES} lines unless a comment above says why`, () => {
    expect(files.flatMap(longFunctions)).toEqual([]);
  });
});

describe("docs/architecture.md", () => {
  it("shows the same import directions as the rules the test checks", () => {
    const doc = readFileSync(join(ROOT, "docs/architecture.md"), "utf8");
    const rows = [...doc.matchAll(/^\| ([a-z]+) \| `[^`]+` \| ([^|]+) \|$/gm)];
    const documented = Object.fromEntries(rows.map(([, layer, allowed]) => [layer, allowed!.trim()]));
    const expected = Object.fromEntries(
      Object.entries(LAYERS).map(([layer, allowed]) => [
        layer,
        layer === "cli" ? "every layer below" : layer === "schemas" ? "nothing but zod" : allowed.join(", "),
      ]),
    );
    expect(documented).toEqual(expected);
  });
});

describe("the architecture check itself", () => {
  it("finds a cycle through several files, and a file importing itself, but not a chain", () => {
    const g = (edges: Record<string, string[]>) => new Map(Object.entries(edges).map(([f, local]) => [f, { local }]));
    expect(cycles(g({ a: ["b"], b: ["c"], c: ["a"], d: ["a"] }))).toEqual([["a", "b", "c"]]);
    expect(cycles(g({ a: ["a"] }))).toEqual([["a"]]);
    expect(cycles(g({ a: ["b"], b: ["c"], c: [] }))).toEqual([]);
  });

  it("flags an import against the flow and passes one along it", () => {
    expect(againstFlow({ from: "agent/store/snapshots.ts", to: "agent/reconcile/plan.ts" })).toBe(true);
    expect(againstFlow({ from: "agent/fleet/rollout.ts", to: "agent/cli/args.ts" })).toBe(true);
    expect(againstFlow({ from: "agent/store/snapshots.ts", to: "test/support/layers.ts" })).toBe(true);
    expect(againstFlow({ from: "agent/reconcile/plan.ts", to: "agent/store/leases.ts" })).toBe(false);
    expect(againstFlow({ from: "agent/runtime/runtime.ts", to: "agent/runtime/cgroup.ts" })).toBe(false);
    expect(layerOf("agent/errors.ts")).toBe("base");
  });
});
