/**
 * Small HTTP(S) servers on 127.0.0.1 with a handler of the test's own, for
 * a registry that misbehaves on purpose: the HTTPS ones carry a certificate
 * signed by a CA made for the test (makeTls), which the client under test is
 * configured with. Every request a server saw is kept, for the test to look at.
 */
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { TlsFiles } from "./registry.js";

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface Served {
  origin: string; // https://127.0.0.1:PORT (or http://)
  host: string; // 127.0.0.1:PORT
  port: number;
  seen: IncomingMessage[];
  server: Server;
}

export class HostileServers {
  private readonly servers: Server[] = [];

  constructor(private readonly tls: TlsFiles) {}

  /** A server on `address` (a loopback address: 127.0.0.1 unless the test needs another). */
  async serve(secure: boolean, handler: Handler, address = "127.0.0.1"): Promise<Served> {
    const seen: IncomingMessage[] = [];
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      seen.push(req);
      handler(req, res);
    };
    const server = secure
      ? createHttpsServer({ cert: readFileSync(this.tls.serverCert), key: readFileSync(this.tls.serverKey) }, onRequest)
      : createHttpServer(onRequest);
    this.servers.push(server);
    server.listen(0, address);
    await once(server, "listening");
    const { port } = server.address() as { port: number };
    return {
      origin: `${secure ? "https" : "http"}://${address}:${port}`,
      host: `${address}:${port}`,
      port,
      seen,
      server,
    };
  }

  close(): void {
    for (const s of this.servers) {
      s.closeAllConnections();
      s.close();
    }
  }
}
