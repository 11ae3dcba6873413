/**
 * A listener whose HTTP server is made at its first connection. The socket
 * is a plain node:net server; node:http (its parser, its server and its
 * client, which load together: about 1.6 MiB resident under the agent's
 * flags) is taken only when someone connects, so an agent whose endpoint
 * nobody asks never holds it. Each accepted connection is handed to the HTTP
 * server as node:http documents, by emitting `connection` on it.
 */
import type { Server as HttpServer } from "node:http";
import type { AddressInfo, Server as NetServer, Socket } from "node:net";

export class LazyHttpListener {
  readonly listener: NetServer;
  private http: HttpServer | undefined;

  /** `make` builds the HTTP server (never listening itself) at the first connection. */
  constructor(private readonly make: (http: typeof import("node:http")) => HttpServer) {
    // The options node:http gives its own listener: a client's half-close
    // is the HTTP server's to handle, and no Nagle delay on answers.
    const options = { allowHalfOpen: true, noDelay: true };
    this.listener = process.getBuiltinModule("node:net").createServer(options, (socket) => this.accept(socket));
  }

  private accept(socket: Socket): void {
    if (!this.http) {
      this.http = this.make(process.getBuiltinModule("node:http"));
      // What a listening HTTP server does on `listening`: track its
      // connections, so that its header and request timeouts are enforced
      // and closeAllConnections reaches them.
      this.http.emit("listening");
    }
    this.http.emit("connection", socket);
  }

  /** Whether an HTTP server was made (someone connected). */
  get loaded(): boolean {
    return this.http !== undefined;
  }

  address(): AddressInfo | string | null {
    return this.listener.address();
  }

  /** Stops listening and ends every connection, keep-alive ones (a browser tab refreshing the page) too. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      const http = this.http;
      if (http) {
        // Stops the timeouts' check (its net close reports "not running": it never listened itself).
        http.close(() => {});
        http.closeAllConnections();
      }
      if (!this.listener.listening) return resolve();
      this.listener.close(() => resolve());
    });
  }
}
