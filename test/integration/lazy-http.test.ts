/**
 * The status endpoint's listener, whose HTTP server is made at the first
 * connection (agent/api/lazy-http.ts): it must behave as a listening
 * node:http server does, for the clients a small device meets.
 */
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { LazyHttpListener } from "../../agent/api/lazy-http.js";

let listener: LazyHttpListener | undefined;
afterEach(async () => {
  await listener?.close();
  listener = undefined;
});

async function start(setup: (http: typeof import("node:http")) => import("node:http").Server): Promise<number> {
  listener = new LazyHttpListener(setup);
  listener.listener.listen(0, "127.0.0.1");
  await once(listener.listener, "listening");
  return (listener.address() as { port: number }).port;
}

const answering = (http: typeof import("node:http")) => http.createServer((_req, res) => res.end("answer\n"));

/** Everything the server sends until it closes the connection. */
async function readAll(socket: Socket): Promise<string> {
  let text = "";
  socket.setEncoding("utf8").on("data", (d: string) => (text += d));
  await once(socket, "close");
  return text;
}

describe("the lazily made HTTP server", () => {
  it("is made at the first connection, not before", async () => {
    const port = await start(answering);
    expect(listener!.loaded).toBe(false);
    const res = await fetch(`http://127.0.0.1:${port}/`);
    expect(await res.text()).toBe("answer\n");
    expect(listener!.loaded).toBe(true);
  });

  it("enforces the server's header timeout on a client that never finishes its headers", async () => {
    const port = await start((http) => {
      const server = http.createServer({ connectionsCheckingInterval: 50 }, () => {});
      server.headersTimeout = 200;
      return server;
    });
    const socket = connect(port, "127.0.0.1");
    await once(socket, "connect");
    socket.write("GET / HTTP/1.1\r\nHost: local");
    const started = Date.now();
    const text = await readAll(socket);
    expect(text).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("ends a keep-alive connection when closed, instead of waiting for the client", async () => {
    const port = await start(answering);
    const socket = connect(port, "127.0.0.1");
    await once(socket, "connect");
    socket.write("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n");
    await once(socket, "data");
    const closed = once(socket, "close");
    await listener!.close();
    await closed;
    expect(listener!.listener.listening).toBe(false);
  });
});
