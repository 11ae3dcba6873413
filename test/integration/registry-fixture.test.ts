/**
 * The registry fixtures against the real programs: Debian's docker-registry
 * with htpasswd, token and no auth, the token issuer, umoci + skopeo pushes
 * and the counting TCP proxy.
 */
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { request } from "node:https";
import { join } from "node:path";
import { connect } from "node:tls";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type CountingProxy, startCountingProxy } from "../support/counting-proxy.js";
import { type RegistryFixture, startRegistry, TOKEN_SERVICE } from "../support/registry.js";
import { pushWithSkopeo } from "../support/third-party-image.js";

const rootfs = inject("busyboxRootfs");
const run = promisify(execFile);

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function get(url: string, ca: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, headers, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

const basic = (user: string, password: string) => ({
  authorization: `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`,
});
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

function skopeoInspect(reg: RegistryFixture, ref: string, ...flags: string[]) {
  return run("skopeo", [
    "inspect",
    ...flags,
    "--cert-dir",
    reg.certDir,
    "--creds",
    `${reg.username}:${reg.password}`,
    `docker://${reg.host}/${ref}`,
  ]);
}

describe("htpasswd registry", () => {
  let reg: RegistryFixture;
  let ca: string;
  beforeAll(async () => {
    reg = await startRegistry({ auth: "htpasswd" });
    ca = readFileSync(reg.caFile, "utf8");
  });
  afterAll(() => reg?.stop());

  it("answers /v2/ with 401 without credentials, 401 with a wrong password and 200 with the right ones", async () => {
    const url = `https://${reg.host}/v2/`;
    expect((await get(url, ca)).status).toBe(401);
    expect((await get(url, ca, basic(reg.username, "wrong"))).status).toBe(401);
    expect((await get(url, ca, basic(reg.username, reg.password))).status).toBe(200);
    expect(reg.certDir).not.toBe("");
    expect(readFileSync(join(reg.certDir, "ca.crt"), "utf8")).toBe(ca);
  });

  it("stores an image pushed by umoci + skopeo, with its cmd", async () => {
    await pushWithSkopeo(reg, rootfs, "third-party/busybox:1.0", { cmd: ["/bin/sh", "-c", "echo hi"] });
    const manifest = JSON.parse((await skopeoInspect(reg, "third-party/busybox:1.0", "--raw")).stdout);
    expect(manifest.mediaType ?? manifest.config.mediaType).toMatch(/oci/);
    expect(manifest.layers).toHaveLength(1);
    const config = JSON.parse((await skopeoInspect(reg, "third-party/busybox:1.0", "--config")).stdout);
    expect(config.config.Cmd).toEqual(["/bin/sh", "-c", "echo hi"]);
    const layer = manifest.layers[0].digest.replace("sha256:", "");
    expect(existsSync(join(reg.storageDir, "docker/registry/v2/blobs/sha256", layer.slice(0, 2), layer, "data"))).toBe(
      true,
    );
  });
});

describe("token registry", () => {
  let reg: RegistryFixture;
  let ca: string;
  let realm: string;
  const token = async (user: string, password: string, ...scopes: string[]) => {
    const query = new URLSearchParams([["service", TOKEN_SERVICE], ...scopes.map((s) => ["scope", s])]);
    return get(`${realm}?${query}`, ca, basic(user, password));
  };
  const tokenFor = async (...scopes: string[]) =>
    JSON.parse((await token(reg.username, reg.password, ...scopes)).body).token as string;

  beforeAll(async () => {
    reg = await startRegistry({ auth: "token" });
    ca = readFileSync(reg.caFile, "utf8");
    const challenge = String((await get(`https://${reg.host}/v2/`, ca)).headers["www-authenticate"]);
    realm = /realm="([^"]+)"/.exec(challenge)?.[1] ?? "";
  });
  afterAll(() => reg?.stop());

  it("challenges /v2/ with a Bearer realm and service", async () => {
    const res = await get(`https://${reg.host}/v2/`, ca);
    expect(res.status).toBe(401);
    expect(res.headers["www-authenticate"]).toMatch(
      new RegExp(`^Bearer realm="https://127\\.0\\.0\\.1:\\d+/token",service="${TOKEN_SERVICE}"`),
    );
  });

  it("refuses anonymous and wrong credentials at the issuer", async () => {
    const before = reg.tokenRequests!();
    expect((await get(`${realm}?scope=repository:a/b:pull`, ca)).status).toBe(401);
    expect((await token(reg.username, "wrong", "repository:a/b:pull")).status).toBe(401);
    expect((await token("someone-else", reg.password, "repository:a/b:pull")).status).toBe(401);
    expect(reg.tokenRequests!()).toBe(before);
  });

  it("issues tokens the registry accepts for /v2/ and the catalog", async () => {
    const before = reg.tokenRequests!();
    const res = await token(reg.username, reg.password, "registry:catalog:*");
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body);
    expect(body).toMatchObject({ expires_in: 300, access_token: body.token });
    expect(Date.parse(body.issued_at)).not.toBeNaN();
    expect(reg.tokenRequests!()).toBe(before + 1);
    expect((await get(`https://${reg.host}/v2/`, ca, bearer(body.token))).status).toBe(200);
    expect((await get(`https://${reg.host}/v2/_catalog`, ca, bearer(body.token))).status).toBe(200);
  });

  it("rejects a token whose claims were altered after signing", async () => {
    const [header, claims, signature] = (await tokenFor("registry:catalog:*")).split(".");
    const altered = JSON.parse(Buffer.from(claims!, "base64url").toString());
    altered.sub = "mallory";
    const forged = `${header}.${Buffer.from(JSON.stringify(altered)).toString("base64url")}.${signature}`;
    expect((await get(`https://${reg.host}/v2/`, ca, bearer(forged))).status).toBe(401);
  });

  it("lets skopeo push through the token flow, and enforces each token's repository scope", async () => {
    const before = reg.tokenRequests!();
    await pushWithSkopeo(reg, rootfs, "fleet/app:v1");
    expect(reg.tokenRequests!()).toBeGreaterThan(before);
    const tags = `https://${reg.host}/v2/fleet/app/tags/list`;
    const allowed = await get(tags, ca, bearer(await tokenFor("repository:fleet/app:pull")));
    expect(allowed.status).toBe(200);
    expect(JSON.parse(allowed.body)).toEqual({ name: "fleet/app", tags: ["v1"] });
    expect((await get(tags, ca, bearer(await tokenFor("repository:fleet/other:pull")))).status).toBe(401);
    // Several scope parameters in one request all land in the token.
    const both = await tokenFor("repository:fleet/other:pull", "repository:fleet/app:pull,push");
    expect((await get(tags, ca, bearer(both))).status).toBe(200);
  });
});

describe("registry without auth", () => {
  it("serves /v2/ openly, and stop() kills it, removes its files and can be called twice", async () => {
    const reg = await startRegistry({ auth: "none" });
    const ca = readFileSync(reg.caFile, "utf8");
    expect((await get(`https://${reg.host}/v2/`, ca)).status).toBe(200);
    await reg.stop();
    await reg.stop();
    await expect(get(`https://${reg.host}/v2/`, ca)).rejects.toThrow(/ECONNREFUSED/);
    expect(existsSync(reg.storageDir)).toBe(false);
  });
});

describe("counting proxy", () => {
  let reg: RegistryFixture;
  let proxy: CountingProxy;
  let ca: string;
  beforeAll(async () => {
    reg = await startRegistry({ auth: "htpasswd" });
    proxy = await startCountingProxy({ host: "127.0.0.1", port: reg.port });
    ca = readFileSync(reg.caFile, "utf8");
  });
  afterAll(async () => {
    await proxy?.stop();
    await reg?.stop();
  });

  it("forwards TLS to the registry and counts the bytes coming down", async () => {
    proxy.reset();
    expect(proxy.bytesDown()).toBe(0);
    const res = await get(`https://${proxy.host}/v2/`, ca, basic(reg.username, reg.password));
    expect(res.status).toBe(200);
    expect(proxy.bytesDown()).toBeGreaterThan(res.body.length);
    proxy.reset();
    expect(proxy.bytesDown()).toBe(0);
  });

  it("breaks a live connection on dropConnections() and still accepts new ones", async () => {
    const socket = connect({ host: "127.0.0.1", port: proxy.port, ca });
    await new Promise<void>((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
    const firstReply = new Promise<string>((resolve) => socket.once("data", (d: Buffer) => resolve(d.toString())));
    socket.write(`GET /v2/ HTTP/1.1\r\nHost: ${proxy.host}\r\n\r\n`);
    expect(await firstReply).toMatch(/^HTTP\/1\.1 401/);
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    socket.on("error", () => {}); // a reset is the expected way for the dropped link to show
    proxy.dropConnections();
    await closed;
    expect(socket.destroyed).toBe(true);
    expect((await get(`https://${proxy.host}/v2/`, ca)).status).toBe(401);
  });
});
