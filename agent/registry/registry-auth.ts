/**
 * Authentication to one registry: the scheme it asks for in a 401's
 * WWW-Authenticate (basic, or bearer tokens from its token service), the
 * Authorization header for a repository scope, and bearer tokens cached per
 * scope until they expire.
 */
import { FleetError } from "../errors.js";
import { type Challenge, parseChallenge } from "./www-authenticate.js";

export interface RegistryCredentials {
  username?: string | undefined;
  password?: string | undefined;
}

/** A GET of the token service's URL, made by the client with its TLS settings and retries. */
export type TokenRequest = (
  url: URL,
  headers: Record<string, string>,
  signal?: AbortSignal,
) => Promise<{ statusCode: number; body: Buffer }>;

export class RegistryAuth {
  private readonly tokens = new Map<string, { value: string; expires: number }>();
  private challenge: Challenge | undefined;

  /** `plainRealm`: a token service on plain HTTP is acceptable (the registry itself is configured `insecure`). */
  constructor(
    private readonly registry: string,
    private readonly credentials: RegistryCredentials,
    private readonly requestToken: TokenRequest,
    private readonly plainRealm = false,
  ) {}

  /** The Authorization header for a repository scope, when one is known. */
  authorization(scope: string): string | undefined {
    if (this.challenge?.scheme === "bearer") {
      const t = this.tokens.get(scope);
      return t && t.expires > Date.now() ? `Bearer ${t.value}` : undefined;
    }
    if (this.challenge?.scheme === "basic" && this.credentials.username !== undefined) return this.basic();
    return undefined;
  }

  /** Answers a 401: learns the scheme and, for bearer, fetches a token for the scope. */
  async authenticate(header: string | undefined, scope: string, signal?: AbortSignal): Promise<void> {
    const challenge = parseChallenge(header);
    if (!challenge) throw this.error("the registry asked for authentication without saying how");
    this.challenge = challenge;
    if (challenge.scheme === "basic") {
      if (this.credentials.username === undefined) throw this.error("the registry needs a username and password");
      return;
    }
    if (challenge.scheme !== "bearer" || !challenge.params.realm)
      throw this.error(`unsupported authentication scheme "${challenge.scheme}"`);
    const url = this.realmUrl(challenge.params.realm);
    if (challenge.params.service) url.searchParams.set("service", challenge.params.service);
    url.searchParams.append("scope", scope);
    const headers: Record<string, string> = {};
    if (this.credentials.username !== undefined) headers.authorization = this.basic();
    const res = await this.requestToken(url, headers, signal);
    if (res.statusCode === 401 || res.statusCode === 403)
      throw this.error(`the token service at ${url.origin} refused the credentials (HTTP ${res.statusCode})`);
    if (res.statusCode !== 200)
      throw new FleetError("E_REGISTRY", `${this.registry}: token service answered HTTP ${res.statusCode}`);
    const body = this.tokenBody(res.body, url);
    const value = body.token ?? body.access_token;
    if (typeof value !== "string" || !value)
      throw new FleetError("E_REGISTRY", `${this.registry}: the token service sent no token`);
    const lifetime = Math.max(60, body.expires_in ?? 60) * 1000;
    // Refresh a little early, so a token never expires mid-request.
    this.tokens.set(scope, { value, expires: Date.now() + lifetime - 10_000 });
  }

  /**
   * The token service's URL from the challenge: https only, unless the
   * registry is plain HTTP anyway, since the request carries the
   * credentials and the token that comes back is one.
   */
  private realmUrl(realm: string): URL {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      // Not swallowed: the URL's own error says less than this one.
      throw this.error(`the token service's realm "${realm}" is not a URL`);
    }
    if (url.protocol === "https:" || (url.protocol === "http:" && this.plainRealm)) return url;
    throw this.error(
      `the registry sends for tokens to ${url.origin}, which is not https; no credentials were sent there`,
    );
  }

  private tokenBody(bytes: Buffer, url: URL): { token?: string; access_token?: string; expires_in?: number } {
    try {
      const body: unknown = JSON.parse(bytes.toString("utf8"));
      if (body !== null && typeof body === "object") return body as { token?: string; access_token?: string };
    } catch (err) {
      throw new FleetError(
        "E_REGISTRY",
        `${this.registry}: the token service at ${url.origin} sent no JSON: ${(err as Error).message}`,
      );
    }
    throw new FleetError("E_REGISTRY", `${this.registry}: the token service at ${url.origin} sent no JSON object`);
  }

  /** E_REGISTRY_AUTH, with a hint to configure credentials when there are none. */
  error(why: string): FleetError {
    const hint =
      this.credentials.username === undefined ? `; set registries."${this.registry}".username and password` : "";
    return new FleetError("E_REGISTRY_AUTH", `${this.registry}: authentication failed: ${why}${hint}`);
  }

  private basic(): string {
    return `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password ?? ""}`).toString("base64")}`;
  }
}
