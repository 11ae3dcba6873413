import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, describe, expect, it } from "vitest";
import { ContentStore } from "../../agent/store/content-store.js";
import { loadNative } from "../../agent/system/native.js";
import { randomBlob as blob } from "../support/test-blobs.js";

const work = mkdtempSync(join(tmpdir(), "fleetlet-ingest-follow-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const store = new ContentStore(work, loadNative().core);

/** Everything the stream gives until it ends. */
async function collect(stream: PassThrough): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

describe("Ingest.follow", () => {
  it("gives the follower every byte in order, waiting for it to drain, and the blob is committed all the same", async () => {
    const { data, digest } = blob(3 * 1024 * 1024 + 7);
    const ingest = await store.openIngest(digest, data.length);
    // A follower far smaller than the blob: the writes must wait for the reader.
    const follower = new PassThrough({ highWaterMark: 64 * 1024 });
    expect(ingest.follow(follower)).toBe(true);
    const received = collect(follower);
    for (let at = 0; at < data.length; at += 100_000) {
      const piece = data.subarray(at, Math.min(data.length, at + 100_000));
      await ingest.writeMany([piece.subarray(0, 10), piece.subarray(10)], piece.length);
    }
    await ingest.commit();
    expect(ingest.followed).toBe(true);
    follower.end();
    expect((await received).equals(data)).toBe(true);
    expect(store.has(digest)).toBe(true);
  });

  it("says the follower missed bytes once the ingest restarted", async () => {
    const { data, digest } = blob(4096);
    const ingest = await store.openIngest(digest, data.length);
    const follower = new PassThrough();
    follower.resume();
    expect(ingest.follow(follower)).toBe(true);
    await ingest.write(data.subarray(0, 1000));
    await ingest.restart();
    await ingest.write(data);
    await ingest.commit();
    expect(ingest.followed).toBe(false);
  });

  it("will not follow a partial resumed from disk, and drops a follower that was destroyed", async () => {
    const { data, digest } = blob(8192);
    const first = await store.openIngest(digest, data.length);
    await first.write(data.subarray(0, 100));
    await first.close();
    const resumed = await store.openIngest(digest, data.length);
    expect(resumed.offset).toBe(100);
    expect(resumed.follow(new PassThrough())).toBe(false);
    await resumed.close();

    const other = blob(8192);
    const ingest = await store.openIngest(other.digest, other.data.length);
    const follower = new PassThrough();
    expect(ingest.follow(follower)).toBe(true);
    follower.destroy();
    await ingest.write(other.data);
    await ingest.commit();
    expect(ingest.followed).toBe(false);
    expect(store.has(other.digest)).toBe(true);
  });
});
