/**
 * `node build/test/bench/unpack-one.js BLOB MEDIATYPE DEST`: unpacks one
 * layer blob into an empty directory, as its own process, so that the pull
 * benchmark times and charges it the same way as `tar -xzf`.
 */
import { createReadStream } from "node:fs";
import { unpackLayer } from "../../agent/store/layer-unpack.js";
import { loadNative } from "../../agent/system/native.js";

const [blob, mediaType, dest] = process.argv.slice(2);
if (!blob || !mediaType || !dest) {
  console.error("usage: unpack-one BLOB MEDIATYPE DEST");
  process.exit(2);
}
await unpackLayer(createReadStream(blob, { highWaterMark: 1 << 20 }), {
  dest,
  mediaType,
  native: loadNative().core,
});
