import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { layerCompression, safeRelativePath } from "../../agent/store/layer-unpack.js";
import { parsePax, readTar, type TarHeader } from "../../agent/store/tar-reader.js";
import { buildTar, entryHeader } from "../../agent/store/tar-writer.js";

describe("tar round trip", () => {
  it("reads back names, types, bodies and binary xattrs split across tiny chunks", async () => {
    const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0xff, 0xfe, 0x80, 0x00]);
    const long = `${"d/".repeat(60)}file`;
    const tar = buildTar([
      { name: "dir/", type: "dir", mode: 0o750, uid: 10, gid: 20 },
      {
        name: "dir/ping",
        type: "file",
        mode: 0o4755,
        body: Buffer.from("binary"),
        xattrs: new Map([["security.capability", cap]]),
      },
      { name: long, type: "file", body: Buffer.alloc(1000, 7) },
      { name: "link", type: "symlink", linkname: "/etc/passwd" },
      { name: "hard", type: "hardlink", linkname: "dir/ping" },
    ]);
    const seen: TarHeader[] = [];
    const bodies: Buffer[] = [];
    let current: Buffer[] = [];
    const parts: Buffer[] = [];
    for (let i = 0; i < tar.length; i += 7) parts.push(tar.subarray(i, i + 7));
    for await (const ev of readTar(Readable.from(parts))) {
      if (ev.kind === "header") {
        seen.push(ev.header);
        current = [];
      } else if (ev.kind === "data") current.push(Buffer.from(ev.chunk));
      else bodies.push(Buffer.concat(current));
    }
    expect(seen.map((h) => [h.name, h.type])).toEqual([
      ["dir/", "dir"],
      ["dir/ping", "file"],
      [long, "file"],
      ["link", "symlink"],
      ["hard", "hardlink"],
    ]);
    expect(seen[0]).toMatchObject({ mode: 0o750, uid: 10, gid: 20 });
    expect(seen[1]!.mode).toBe(0o4755);
    expect(seen[1]!.xattrs.get("security.capability")).toEqual(cap);
    expect(bodies[1]!.toString()).toBe("binary");
    expect(bodies[2]).toEqual(Buffer.alloc(1000, 7));
    expect(seen[3]!.linkname).toBe("/etc/passwd");
  });

  it("refuses a header with a bad checksum", async () => {
    const tar = buildTar([{ name: "f", type: "file", body: Buffer.from("x") }]);
    tar[10] = 0x41;
    await expect(async () => {
      for await (const _ of readTar(Readable.from([tar]))) {
        // reading is the test
      }
    }).rejects.toThrow(/checksum/);
  });

  it("keeps pax values as bytes", () => {
    const rec = entryHeader({
      name: "x",
      type: "file",
      size: 0,
      xattrs: new Map([["user.bin", Buffer.from([0, 255, 10])]]),
    });
    const pax = parsePax(rec.subarray(512, 512 + 30));
    expect(pax.get("SCHILY.xattr.user.bin")).toEqual(Buffer.from([0, 255, 10]));
  });
});

describe("layer names and media types", () => {
  it.each([
    ["./usr/bin/x", "usr/bin/x"],
    ["usr//bin/./x", "usr/bin/x"],
    ["./", ""],
  ])("normalizes %s to %s", (name, rel) => {
    expect(safeRelativePath(name)).toBe(rel);
  });
  it.each(["/etc/passwd", "a/../../b", ".."])("refuses %s", (name) => {
    expect(() => safeRelativePath(name)).toThrow(/E_UNSAFE_LAYER|not allowed|leave the layer/);
  });
  it.each([
    ["application/vnd.oci.image.layer.v1.tar+gzip", "gzip"],
    ["application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"],
    ["application/vnd.oci.image.layer.v1.tar", "none"],
  ])("reads %s as %s", (mediaType, kind) => {
    expect(layerCompression(mediaType)).toBe(kind);
  });
  it("reads zstd layers, and says plainly which media types it does not know", () => {
    expect(layerCompression("application/vnd.oci.image.layer.v1.tar+zstd")).toBe("zstd");
    expect(() => layerCompression("application/vnd.oci.image.layer.v1.tar+lzma")).toThrow(
      /layer media type application\/vnd.oci.image.layer.v1.tar\+lzma is not one fleetlet knows how to unpack/,
    );
  });
});
