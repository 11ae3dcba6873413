/**
 * The native core's body framing (native/src/http-body.cc) under generated
 * answers (fast-check): a blob sent with Content-Length, in chunks or until
 * the connection closes, chunk sizes in either case, with leading zeros,
 * extensions and trailers, the answer cut into pieces that arrive apart, so
 * that a size line, a CRLF or the last chunk is split across reads. Every
 * well-formed answer stores the blob, byte for byte. The same answers cut
 * short or with one byte of their framing changed are either still read
 * right or refused with a registry error that says what went wrong, and
 * never leave a wrong blob in the store.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FleetError } from "../../agent/errors.js";
import { fetchBlob } from "../../agent/registry/blob-fetch.js";
import { RateLimiter } from "../../agent/registry/rate-limit.js";
import { RegistryClient } from "../../agent/registry/registry-client.js";
import { ContentStore } from "../../agent/store/content-store.js";
import { loadNative } from "../../agent/system/native.js";
import { HostileServers } from "../support/hostile-server.js";
import { makeTls } from "../support/registry.js";
import { randomBlob } from "../support/test-blobs.js";

const RUNS = 100;
/** A fraction in [0, 1), spread evenly (fast-check's doubles crowd near zero). */
const fraction = fc.nat({ max: 999_999 }).map((n) => n / 1_000_000);
/** What a broken answer may be refused with: never anything else, and never a crash or a hang. */
const REFUSALS = new Set(["E_REGISTRY", "E_REGISTRY_UNREACHABLE", "E_DIGEST_MISMATCH"]);

let work: string;
let servers: HostileServers;
let store: ContentStore;
/** The registry: whatever is asked, it sends `current`'s bytes in its pieces, then closes the connection. */
let host: string;
let current: { bytes: Buffer; cuts: number[] } = { bytes: Buffer.alloc(0), cuts: [] };

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-blob-http-prop-"));
  servers = new HostileServers(await makeTls(work));
  store = new ContentStore(join(work, "store"), loadNative().core);
  ({ host } = await servers.serve(false, (req) => void writeApart(req.socket, current.bytes, current.cuts)));
});

afterAll(() => {
  servers.close();
  rmSync(work, { recursive: true, force: true });
});

interface Shape {
  size: number;
  framing: "length" | "chunked" | "close";
  /** Chunk lengths, used in turn until the blob is cut up. */
  chunks: number[];
  upper: boolean;
  zeros: number;
  extension: boolean;
  trailers: number;
  /** Where the answer is cut into the pieces the server writes apart, as fractions of its length. */
  cuts: number[];
}

const shape: fc.Arbitrary<Shape> = fc.record({
  size: fc.oneof(fc.integer({ min: 1, max: 5000 }), fc.integer({ min: 100_000, max: 600_000 })),
  framing: fc.constantFrom("length", "chunked", "close"),
  chunks: fc.array(fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 300_000 })), {
    minLength: 1,
    maxLength: 8,
  }),
  upper: fc.boolean(),
  zeros: fc.integer({ min: 0, max: 3 }),
  extension: fc.boolean(),
  trailers: fc.integer({ min: 0, max: 2 }),
  cuts: fc.array(fraction, { maxLength: 12 }),
});

/** The answer's bytes, and where its framing is (the head and the chunk lines: what a corruption may hit). */
function answer(s: Shape, data: Buffer): { bytes: Buffer; framing: number[] } {
  const parts: Buffer[] = [];
  const framing: number[] = [];
  let at = 0;
  const push = (b: Buffer, isFraming: boolean) => {
    if (isFraming) for (let i = 0; i < b.length; i++) framing.push(at + i);
    parts.push(b);
    at += b.length;
  };
  const head =
    s.framing === "length"
      ? `content-length: ${data.length}\r\n`
      : s.framing === "chunked"
        ? "transfer-encoding: chunked\r\n"
        : "connection: close\r\n";
  push(Buffer.from(`HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n${head}\r\n`), true);
  if (s.framing !== "chunked") {
    push(data, false);
    return { bytes: Buffer.concat(parts), framing };
  }
  const hex = (n: number) => "0".repeat(s.zeros) + (s.upper ? n.toString(16).toUpperCase() : n.toString(16));
  const ext = s.extension ? ';name="value"' : "";
  for (let from = 0, i = 0; from < data.length; i++) {
    const n = Math.min(s.chunks[i % s.chunks.length]!, data.length - from);
    push(Buffer.from(`${hex(n)}${ext}\r\n`), true);
    push(data.subarray(from, from + n), false);
    push(Buffer.from("\r\n"), true);
    from += n;
  }
  const trailers = Array.from({ length: s.trailers }, (_, i) => `x-trailer-${i}: ${i}\r\n`).join("");
  push(Buffer.from(`${hex(0)}${ext}\r\n${trailers}\r\n`), true);
  return { bytes: Buffer.concat(parts), framing };
}

/** Writes `bytes` in the pieces `cuts` make, a moment apart, then closes the connection. */
async function writeApart(socket: Socket, bytes: Buffer, cuts: number[]): Promise<void> {
  socket.setNoDelay(true);
  const at = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  let from = 0;
  for (const to of [...at, bytes.length]) {
    if (to <= from) continue;
    if (socket.destroyed) return;
    socket.write(bytes.subarray(from, to));
    from = to;
    await sleep(1);
  }
  socket.end();
}

/** Has the registry answer `bytes`, and fetches the blob from it over plain HTTP; resolves with the outcome. */
async function fetchFrom(bytes: Buffer, cuts: number[], data: Buffer, digest: string) {
  current = { bytes, cuts };
  const c = new RegistryClient(host, { insecure: true }, { attempts: 1 });
  try {
    await fetchBlob(c, "a", { digest, size: data.length }, store, { limiter: new RateLimiter(0) });
    return { stored: readFileSync(join(work, "store", "blobs", "sha256", digest.slice(7))) };
  } catch (err) {
    return { err };
  } finally {
    c.close();
  }
}

describe("blob bodies over the native connection, generated", () => {
  it("stores every well-formed answer byte for byte, however it is framed and cut", async () => {
    await fc.assert(
      fc.asyncProperty(shape, async (s) => {
        const { data, digest } = randomBlob(s.size);
        const outcome = await fetchFrom(answer(s, data).bytes, s.cuts, data, digest);
        expect(outcome.err).toBeUndefined();
        expect(outcome.stored?.equals(data)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  }, 180_000);

  it("reads a broken answer right or refuses it with a registry error that says why, never storing a wrong blob", async () => {
    const broken = fc.record({
      shape,
      cut: fc.option(fraction, { nil: undefined }),
      hit: fraction,
      byte: fc.integer({ min: 0, max: 255 }),
    });
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(broken, async ({ shape: s, cut, hit, byte }) => {
        const { data, digest } = randomBlob(s.size);
        const { bytes, framing } = answer(s, data);
        // Either cut short, or one byte of the framing changed.
        const sent = cut !== undefined ? bytes.subarray(0, Math.floor(cut * bytes.length)) : Buffer.from(bytes);
        if (cut === undefined) sent[framing[Math.floor(hit * framing.length)]!] = byte;
        const outcome = await fetchFrom(sent, s.cuts, data, digest);
        if (outcome.err === undefined) {
          expect(outcome.stored?.equals(data)).toBe(true);
          return;
        }
        refused++;
        expect(outcome.err).toBeInstanceOf(FleetError);
        expect(REFUSALS, String(outcome.err)).toContain((outcome.err as FleetError).code);
        // It says what went wrong, not only a code: "failed: ECONNRESET: the server closed the connection …".
        expect((outcome.err as FleetError).message).not.toMatch(/failed: [A-Z_]+$/);
        expect(store.has(digest)).toBe(false);
      }),
      { numRuns: RUNS },
    );
    expect(refused).toBeGreaterThan(RUNS / 4); // the generator does break answers
  }, 180_000);
});
