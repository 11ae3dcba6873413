/** The native core's BlobWriter: the bytes on disk and their sha256, written and hashed off the event loop. */
import { createHash, randomBytes } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { errnoName } from "../../agent/errors.js";
import { loadNative } from "../../agent/system/native.js";

const { BlobWriter } = loadNative().core;
const work = mkdtempSync(join(tmpdir(), "fleetlet-blob-writer-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("BlobWriter", () => {
  it("writes batches of buffers at their positions and hashes exactly those bytes", async () => {
    const path = join(work, "batches");
    const fd = openSync(path, "w+");
    try {
      const w = new BlobWriter(fd);
      // Odd sizes, a view into a larger buffer, and more buffers than one pwritev takes (1024).
      const big = randomBytes(3000);
      const first = [randomBytes(1), big.subarray(17, 2017), Buffer.alloc(0), randomBytes(65_537)];
      const second = Array.from({ length: 1500 }, (_, i) => randomBytes(1 + (i % 7)));
      await w.write(first, 0);
      const firstLength = first.reduce((n, b) => n + b.length, 0);
      await w.write(second, firstLength);
      const all = Buffer.concat([...first, ...second]);
      expect(readFileSync(path).equals(all)).toBe(true);
      expect(w.digest()).toBe(sha256(all));
    } finally {
      closeSync(fd);
    }
  });

  it("resumes a partial by hashing the bytes already in the file, then what follows", async () => {
    const path = join(work, "partial");
    const head = randomBytes(3 * 1024 * 1024 + 5);
    const tail = randomBytes(4096);
    writeFileSync(path, head);
    const fd = openSync(path, "r+");
    try {
      const w = new BlobWriter(fd);
      await w.hashFile(head.length);
      await w.write([tail], head.length);
      expect(w.digest()).toBe(sha256(Buffer.concat([head, tail])));
    } finally {
      closeSync(fd);
    }
  });

  it("over no file (fd -1), only hashes", async () => {
    const w = new BlobWriter(-1);
    const parts = [randomBytes(100_000), randomBytes(3)];
    await w.write([parts[0]!], 0);
    await w.write([parts[1]!], 0);
    expect(w.digest()).toBe(sha256(Buffer.concat(parts)));
  });

  it("starts the hash over on reset", async () => {
    const path = join(work, "reset");
    const fd = openSync(path, "w+");
    try {
      const w = new BlobWriter(fd);
      await w.write([Buffer.from("thrown away")], 0);
      w.reset();
      await w.write([Buffer.from("kept")], 0);
      expect(w.digest()).toBe(sha256(Buffer.from("kept")));
    } finally {
      closeSync(fd);
    }
  });

  it("refuses a second operation while one runs, and a file shorter than the length to hash", async () => {
    const path = join(work, "short");
    writeFileSync(path, Buffer.alloc(10));
    const fd = openSync(path, "r+");
    try {
      const w = new BlobWriter(fd);
      const running = w.write([randomBytes(1 << 20)], 0);
      expect(() => w.write([Buffer.from("x")], 0)).toThrow(/already running/);
      await running;
      await expect(new BlobWriter(fd).hashFile(2 << 20)).rejects.toThrow(/ended before/);
    } finally {
      closeSync(fd);
    }
  });

  it("rejects with the errno of a failed write", async () => {
    const path = join(work, "readonly");
    writeFileSync(path, "");
    const fd = openSync(path, "r");
    try {
      const err = await new BlobWriter(fd).write([Buffer.from("x")], 0).catch((e: unknown) => e);
      expect(errnoName(err)).toBe("EBADF");
      expect(String(err)).toContain("write");
    } finally {
      closeSync(fd);
    }
  });
});
