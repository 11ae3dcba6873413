/**
 * What it takes to reach the broker, shared by the agent's session and
 * fleetctl's client: the MQTT settings of the config, the TLS material read
 * from their files and checked to be usable, the broker URL as a log line
 * may show it (without a password), and a failed connection told in a
 * sentence that says whether retrying could ever help.
 */
import { readFileSync } from "node:fs";
import { ErrorWithReasonCode, type IClientOptions } from "mqtt";
import { FleetError } from "../errors.js";

/** The config's `mqtt`; ca, cert and key are file paths. */
export interface MqttSettings {
  url: string;
  ca?: string;
  cert?: string;
  key?: string;
  username?: string;
  password?: string;
  prefix: string;
  /** The config's mqtt.insecure: a plaintext URL was allowed by name (schemas/config.ts refuses one otherwise). */
  insecure?: boolean;
  /** Seconds between PINGREQs on an idle link; DEFAULT_MQTT_KEEPALIVE_SEC without one. */
  keepaliveSec?: number;
}

/**
 * The TLS key-exchange groups offered to the broker. Node 24's OpenSSL sends
 * two key shares by default: X25519 and the post-quantum hybrid
 * X25519MLKEM768, whose share alone is 1,184 bytes. Brokers on an OpenSSL
 * without ML-KEM (Debian's mosquitto, for one) ignore it, and a device would
 * send it on every handshake. So the hybrid is offered but only X25519's share
 * is sent (`*`): a broker that prefers the hybrid asks for its share (one more
 * round trip, then the same post-quantum key exchange as before), and one that
 * does not have it saves ~1.2 KB per connection. `?` skips a group the local
 * OpenSSL does not know.
 */
export const MQTT_TLS_GROUPS = "?X25519MLKEM768:*X25519:P-256:P-384";
let groups: { ecdhCurve?: string } | undefined;

/** MQTT_TLS_GROUPS, or nothing (Node's default) on an OpenSSL older than 3.5, which has no `*` syntax. */
function tlsGroups(): { ecdhCurve?: string } {
  if (groups) return groups;
  try {
    process.getBuiltinModule("node:tls").createSecureContext({ ecdhCurve: MQTT_TLS_GROUPS });
    groups = { ecdhCurve: MQTT_TLS_GROUPS };
  } catch {
    // Not an error of the config: this Node's OpenSSL cannot say it, so its default stands.
    groups = {};
  }
  return groups;
}

/** The TLS part of the client's options: the files' contents, and the groups to offer. */
export type MqttTlsOptions = Pick<IClientOptions, "ca" | "cert" | "key"> & { ecdhCurve?: string };

/** What a broker without MQTT 5 answers a v5 CONNECT with: 3.1.1's "unacceptable protocol version", v5's "unsupported protocol version". */
const PROTOCOL_REFUSALS = new Set([1, 132]);
/** CONNACK refusals that retrying cannot fix: identifier, credentials, authorisation, ban, auth method. */
const CONFIG_REFUSALS = new Set([2, 4, 5, 133, 134, 135, 138, 140]);

/** True when the broker refused a CONNECT for its protocol version (it speaks 3.1.1 only). */
export function isProtocolRefusal(err: Error): boolean {
  return err instanceof ErrorWithReasonCode && PROTOCOL_REFUSALS.has(err.code);
}

/** The URL as it may appear in a log line: without a password. */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url);
    if (!u.password) return url;
    u.password = "***";
    return u.toString();
  } catch {
    // Not a URL at all: connect() refuses it with its own message, which names it.
    return url;
  }
}

function readPem(field: "ca" | "cert" | "key", path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new FleetError("E_INVALID_CONFIG", `mqtt.${field} ${path}: cannot read it (${why})`, { cause: err });
  }
}

/** The TLS material of the config, read now (files may be rotated on disk between connects) and checked to be usable. */
export function tlsOptions(m: MqttSettings): MqttTlsOptions {
  const tls = /^(mqtts|wss):/.test(m.url);
  if (!m.ca && !m.cert && !m.key) return tls ? tlsGroups() : {};
  if (!tls)
    throw new FleetError(
      "E_INVALID_CONFIG",
      `mqtt.url ${displayUrl(m.url)}: mqtt.ca, mqtt.cert or mqtt.key is set but the URL is not TLS; use mqtts:// or wss://`,
    );
  if (Boolean(m.cert) !== Boolean(m.key))
    throw new FleetError(
      "E_INVALID_CONFIG",
      "mqtt.cert and mqtt.key: give both (the client certificate and its private key) or neither",
    );
  const files = {
    ...(m.ca ? { ca: readPem("ca", m.ca) } : {}),
    ...(m.cert && m.key ? { cert: readPem("cert", m.cert), key: readPem("key", m.key) } : {}),
  };
  try {
    // Taken here, not imported: node:tls (with crypto's keys and contexts) is some 3 MiB
    // resident, which an agent on a plaintext broker never needs (README, "Memory").
    process.getBuiltinModule("node:tls").createSecureContext(files);
  } catch (err) {
    throw new FleetError(
      "E_INVALID_CONFIG",
      `mqtt.ca/cert/key (${[m.ca, m.cert, m.key].filter(Boolean).join(", ")}): not usable PEM (${(err as Error).message})`,
      { cause: err },
    );
  }
  return { ...files, ...tlsGroups() };
}

/** A sentence for a failed connection, and whether retrying could ever help. */
export function describeFailure(m: MqttSettings, err: Error): { message: string; permanent: boolean } {
  const broker = `MQTT broker ${displayUrl(m.url)}`;
  if (err instanceof ErrorWithReasonCode) {
    const permanent = CONFIG_REFUSALS.has(err.code);
    const hint = permanent ? "; check deviceId, mqtt.username, mqtt.password and the client certificate" : "";
    return { message: `${broker} refused the connection: ${err.message} (reason ${err.code})${hint}`, permanent };
  }
  const code = String((err as NodeJS.ErrnoException).code ?? "");
  // An alert from the broker: it refused us (our client certificate), not we it.
  if (/^ERR_SSL_.*ALERT.*(CERTIFICATE|UNKNOWN_CA|ACCESS_DENIED)/.test(code)) {
    return {
      message: `${broker}: TLS: the broker refused the handshake (${code}); check mqtt.cert and mqtt.key (now ${m.cert ?? "none"})`,
      permanent: true,
    };
  }
  if (/CERT|SELF_SIGNED|UNABLE_TO_|ALTNAME/.test(code) || err.message === "TLS not authorized") {
    return {
      message: `${broker}: TLS: the broker's certificate is not trusted (${code || err.message}); set mqtt.ca to the CA that signed it (now ${m.ca ?? "the system CAs"})`,
      permanent: true,
    };
  }
  return { message: `${broker}: ${err.message}`, permanent: false };
}

/**
 * Turns Nagle's algorithm off on a broker connection. With it on, a write
 * waits while an earlier small segment is unacknowledged, and the broker
 * delays the ACK of a segment it does not answer (our PUBACK of a desired
 * document) by up to 40 ms: every event and report of an apply waited for
 * it, as does an operator's publish for its previous PUBACK. MQTT.js
 * already gathers the packets written in one tick into one write, so the
 * bytes are the same; only a burst's segments go out apart. A WebSocket
 * stream has no such switch, and keeps its own buffering.
 */
export function sendAtOnce(stream: unknown): void {
  (stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
}
