/**
 * zod as every schema here takes it, configured before any parse. It is
 * zod/mini: functions rather than methods (`z.optional(s)` for
 * `s.optional()`), so a bundle holds only the parts the schemas use. Classic
 * zod gives every schema object some fifty methods of its own: with the
 * whole library bundled (305 kB against 59), that cost each command about
 * 35 ms at its start and the daemon 1 to 2 MiB resident.
 *
 * English messages, the one locale loaded. jitless: at an object schema's
 * first parse zod compiles a parser for it with `new Function`, and to
 * decide whether it may, reads globalThis.navigator, which makes Node load
 * its navigator module. In the daemon, which parses a few small documents
 * now and then, that code and its source would stay resident for days;
 * zod's interpreted path takes microseconds for them.
 */

import { config } from "zod/mini";
import en from "zod/v4/locales/en.js";

config({ ...en(), jitless: true });

// Taken as `import * as z from "./zod.js"`: a namespace used only as `z.name` leaves the rest out of a bundle.
export * from "zod/mini";
