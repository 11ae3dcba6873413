/**
 * A plain TCP proxy in front of a server (the test registry or broker) that
 * counts the bytes flowing each way, and the chunks they came in (about one
 * per TCP segment on an idle link), and can cut every live connection, as a
 * dropped link would. TLS passes through untouched: the fixtures'
 * certificates name IP 127.0.0.1, so they verify through the proxy's address
 * too. `tap` sees every chunk, for a test that reads a plaintext protocol.
 */
import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";

export type Direction = "up" | "down"; // up: client → server

export interface CountingProxy {
  port: number;
  host: string; // "127.0.0.1:PORT"
  bytesDown(): number; // bytes sent from the target to clients since start or reset()
  bytesUp(): number; // bytes sent from clients to the target since start or reset()
  /** Chunks read each way since start or reset(): an estimate of TCP segments, for their header overhead. */
  chunks(): Record<Direction, number>;
  /** Connections accepted since start (not reset). */
  connections(): number;
  reset(): void;
  dropConnections(): void; // destroys all live connections, as a dropped link
  stop(): Promise<void>;
}

function pair(
  client: Socket,
  target: { host: string; port: number },
  live: Set<Socket>,
  count: (dir: Direction, chunk: Buffer) => void,
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
  upstream.on("data", (chunk: Buffer) => count("down", chunk));
  client.on("data", (chunk: Buffer) => count("up", chunk));
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

export async function startCountingProxy(
  target: { host: string; port: number },
  /** `conn` numbers the connections from 1 in the order accepted. */
  opts: { tap?: (dir: Direction, chunk: Buffer, conn: number) => void } = {},
): Promise<CountingProxy> {
  const bytes = { up: 0, down: 0 };
  const chunks = { up: 0, down: 0 };
  let accepted = 0;
  const live = new Set<Socket>();
  const server = createServer((client) => {
    const conn = ++accepted;
    pair(client, target, live, (dir, chunk) => {
      bytes[dir] += chunk.length;
      chunks[dir]++;
      opts.tap?.(dir, chunk, conn);
    });
  });
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
    bytesDown: () => bytes.down,
    bytesUp: () => bytes.up,
    chunks: () => ({ ...chunks }),
    connections: () => accepted,
    reset: () => {
      bytes.up = bytes.down = chunks.up = chunks.down = 0;
    },
    dropConnections,
    stop: () => {
      stopping ??= close(server, dropConnections);
      return stopping;
    },
  };
}
