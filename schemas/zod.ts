/**
 * zod as every schema here takes it, configured before any parse. jitless:
 * at an object schema's first parse zod compiles a parser for it with
 * `new Function`, and to decide whether it may, reads globalThis.navigator,
 * which makes Node load its navigator module. In the daemon, which parses a
 * few small documents now and then, that code and its source would stay
 * resident for days; zod's interpreted path takes microseconds for them.
 */
import { z } from "zod";

z.config({ jitless: true });

export { z };
