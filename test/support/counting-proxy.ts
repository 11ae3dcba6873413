/**
 * A plain TCP proxy in front of a server (usually the test registry) that
 * counts the bytes flowing from the server to the client and can cut every
 * live connection, as a dropped link would. TLS passes through untouched:
 * the registry's certificate names IP 127.0.0.1, so it verifies through the
 * proxy's address too.
 */
import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";

export interface CountingProxy {
  port: number;
  host: string; // "127.0.0.1:PORT"
  bytesDown(): number; // bytes sent from the target to clients since start or reset()
  reset(): void;
  dropConnections(): void; // destroys all live connections, as a dropped link
  stop(): Promise<void>;
}

function pair(
  client: Socket,
  target: { host: string; port: number },
  live: Set<Socket>,
  countDown: (n: number) => void,
): void {
  const upstream = connect(target.port, target.host);
  for (const s of [client, upstream]) {
    live.add(s);
    s.on("close", () => live.delete(s));
    // A reset on one side ends the pair: the other side sees it as a dropped link.
    s.on("error", () => {
      client.destroy();
      upstream.destroy();
    });
  }
  client.on("close", () => upstream.destroy());
  upstream.on("close", () => client.destroy());
  upstream.on("data", (chunk: Buffer) => countDown(chunk.length));
  client.pipe(upstream);
  upstream.pipe(client);
}

async function close(server: Server, dropAll: () => void): Promise<void> {
  if (!server.listening) return;
  const closed = once(server, "close");
  server.close();
  dropAll();
  await closed;
}

export async function startCountingProxy(target: { host: string; port: number }): Promise<CountingProxy> {
  let down = 0;
  const live = new Set<Socket>();
  const server = createServer((client) => pair(client, target, live, (n) => (down += n)));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  if (address === null || typeof address === "string")
    throw new Error("counting proxy: could not read its listening port");
  const dropConnections = () => {
    for (const s of live) s.destroy();
  };
  let stopping: Promise<void> | undefined;
  return {
    port: address.port,
    host: `127.0.0.1:${address.port}`,
    bytesDown: () => down,
    reset: () => {
      down = 0;
    },
    dropConnections,
    stop: () => {
      stopping ??= close(server, dropConnections);
      return stopping;
    },
  };
}
