/**
 * The registry clients of one owner (a CLI command, the agent): one per
 * registry and its settings, made at the first request and kept, so that
 * later pulls reuse its connections, TLS sessions and tokens. And the
 * references resolved under one lease (a deployment's): a deployment that
 * names the same tag twice asks the registry once, and every service of it
 * gets the same image even if the tag moves meanwhile.
 */
import type { ResolvedImage } from "./manifest-resolve.js";
import { type RegistryAuthConfig, RegistryClient } from "./registry-client.js";

export class RegistryClients {
  private readonly clients = new Map<string, { settings: string; client: RegistryClient }>();
  private readonly resolutions = new WeakMap<object, Map<string, Promise<ResolvedImage>>>();

  /** The client for `registry`; a new one when its settings changed (the old one's connections close as they idle). */
  client(registry: string, settings: RegistryAuthConfig = {}): RegistryClient {
    const key = JSON.stringify(settings);
    const kept = this.clients.get(registry);
    if (kept?.settings === key) return kept.client;
    const client = new RegistryClient(registry, settings);
    this.clients.set(registry, { settings: key, client });
    return client;
  }

  /**
   * What `reference` resolved to under `scope` (a lease: one deployment), or
   * the answer of `resolve`, kept for the scope's life. A failed resolution
   * is not kept.
   */
  resolution(scope: object, reference: string, resolve: () => Promise<ResolvedImage>): Promise<ResolvedImage> {
    const known = this.resolutions.get(scope) ?? new Map<string, Promise<ResolvedImage>>();
    this.resolutions.set(scope, known);
    const cached = known.get(reference);
    if (cached) return cached;
    const pending = resolve();
    known.set(reference, pending);
    pending.catch(() => known.delete(reference)); // the caller sees the error; the next asks again
    return pending;
  }

  /** Closes every client's connections. */
  close(): void {
    for (const { client } of this.clients.values()) client.close();
    this.clients.clear();
  }
}
