/** A TCP port on 127.0.0.1 that nothing listens on right now, for a test service to take. */
import { once } from "node:events";
import { createServer } from "node:net";

export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  if (address === null || typeof address === "string") throw new Error("could not find a free TCP port on 127.0.0.1");
  return address.port;
}
