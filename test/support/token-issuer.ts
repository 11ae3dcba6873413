/**
 * A tiny token server for the registry's token auth (the Docker token
 * protocol): GET /token with HTTP basic credentials and scope= parameters
 * returns a JWT that distribution 2.8 verifies against its rootcertbundle.
 * The signing certificate rides in the JWT's x5c header: distribution checks
 * that chain against the bundle and then the signature with its key.
 * The fixture's one user is granted every scope it asks for.
 */
import { randomUUID, sign, X509Certificate } from "node:crypto";
import { once } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";

export const TOKEN_TTL_SECONDS = 300;

export interface TokenIssuerOptions {
  tls: { cert: string; key: string }; // PEM of the HTTPS listener's certificate and key
  signing: { cert: string; key: string }; // PEM of the RSA token-signing certificate and key
  username: string;
  password: string;
  service: string; // the registry's service name: the token's aud
  issuer: string; // the token's iss
}

export interface TokenIssuer {
  port: number;
  realm: string; // https://127.0.0.1:PORT/token
  tokenRequests(): number; // tokens issued so far
  stop(): Promise<void>;
}

export interface Access {
  type: string;
  name: string;
  actions: string[];
}

/**
 * Parses scope parameters such as `repository:fleet/app:pull,push`. A scope
 * parameter may hold several scopes separated by spaces, and names may hold
 * colons (`registry:catalog:*` has none, a repository with a port would), so
 * the type is before the first colon and the actions after the last.
 */
export function parseScopes(params: URLSearchParams): Access[] {
  const scopes = params.getAll("scope").flatMap((s) => s.split(" ").filter(Boolean));
  return scopes.map((scope) => {
    const first = scope.indexOf(":");
    const last = scope.lastIndexOf(":");
    if (first < 1 || last === first)
      throw new Error(`malformed scope ${JSON.stringify(scope)}: expected TYPE:NAME:ACTIONS`);
    return {
      type: scope.slice(0, first),
      name: scope.slice(first + 1, last),
      actions: scope
        .slice(last + 1)
        .split(",")
        .filter(Boolean),
    };
  });
}

const b64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

/** An RS256 JWT whose x5c header carries the signing certificate. */
export function signToken(
  opts: Pick<TokenIssuerOptions, "signing" | "service" | "issuer">,
  subject: string,
  access: Access[],
): string {
  const now = Math.floor(Date.now() / 1000);
  const header = { typ: "JWT", alg: "RS256", x5c: [new X509Certificate(opts.signing.cert).raw.toString("base64")] };
  const claims = {
    iss: opts.issuer,
    sub: subject,
    aud: opts.service,
    exp: now + TOKEN_TTL_SECONDS,
    nbf: now,
    iat: now,
    jti: randomUUID(),
    access,
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(sign("sha256", Buffer.from(input), opts.signing.key))}`;
}

function basicCredentials(req: IncomingMessage): { user: string; password: string } | undefined {
  const m = /^Basic\s+(\S+)$/i.exec(req.headers.authorization ?? "");
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon < 0) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function reply(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

function handler(opts: TokenIssuerOptions, onIssued: () => void) {
  return (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "https://127.0.0.1");
    if (url.pathname !== "/token")
      return reply(res, 404, { error: "not_found", details: `no ${url.pathname} here; tokens are at /token` });
    if (req.method !== "GET")
      return reply(res, 405, { error: "unsupported", details: "only GET /token with basic credentials" });
    const creds = basicCredentials(req);
    if (creds?.user !== opts.username || creds.password !== opts.password) {
      return reply(
        res,
        401,
        { error: "unauthorized", details: creds ? "wrong username or password" : "credentials required" },
        { "www-authenticate": `Basic realm="${opts.issuer}"` },
      );
    }
    let access: Access[];
    try {
      access = parseScopes(url.searchParams);
    } catch (err) {
      return reply(res, 400, { error: "invalid_scope", details: (err as Error).message });
    }
    const token = signToken(opts, creds.user, access);
    onIssued();
    reply(res, 200, { token, access_token: token, expires_in: TOKEN_TTL_SECONDS, issued_at: new Date().toISOString() });
  };
}

async function close(server: Server): Promise<void> {
  if (!server.listening) return;
  const closed = once(server, "close");
  server.close();
  server.closeAllConnections();
  await closed;
}

export async function startTokenIssuer(opts: TokenIssuerOptions): Promise<TokenIssuer> {
  let issued = 0;
  const server = createServer(
    { cert: opts.tls.cert, key: opts.tls.key },
    handler(opts, () => issued++),
  );
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  if (address === null || typeof address === "string")
    throw new Error("token issuer: could not read its listening port");
  let stopping: Promise<void> | undefined;
  return {
    port: address.port,
    realm: `https://127.0.0.1:${address.port}/token`,
    tokenRequests: () => issued,
    stop: () => {
      stopping ??= close(server);
      return stopping;
    },
  };
}
