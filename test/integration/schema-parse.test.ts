/**
 * What parsing a document costs the daemon beyond the parse: schemas/zod.ts
 * turns zod's compiled parsers off (jitless), so a parse compiles no code
 * with `new Function` and never reads globalThis.navigator, which on Node
 * loads a module of its own. Run in a fresh process on dist/, as the daemon
 * runs, so that nothing else has touched navigator first.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { describe, expect, it } from "vitest";

describe("a desired document's parse", () => {
  it("accepts the document without compiling a parser or loading Node's navigator module", async () => {
    const desired = new URL("../../dist/schemas/desired.js", import.meta.url).pathname;
    const script = `
      const compiled = [];
      const RealFunction = Function;
      globalThis.Function = new Proxy(RealFunction, { construct(t, args) { compiled.push(args.at(-1)); return Reflect.construct(t, args); } });
      const { desiredState } = await import(${JSON.stringify(desired)});
      const doc = { apiVersion: "fleetlet/v1", deployment: "d", generation: 1, services: { web: { image: "r.example/web@sha256:${"a".repeat(64)}", command: ["/bin/sh"] } } };
      const r = desiredState.safeParse(doc);
      console.log(JSON.stringify({ ok: r.success, compiled: compiled.length, navigator: process.moduleLoadList.includes("NativeModule internal/navigator") }));
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    await once(child, "close");
    expect(JSON.parse(out)).toEqual({ ok: true, compiled: 0, navigator: false });
  });
});
