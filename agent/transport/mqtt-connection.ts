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
export function tlsOptions(m: MqttSettings): Pick<IClientOptions, "ca" | "cert" | "key"> {
  if (!m.ca && !m.cert && !m.key) return {};
  if (!/^(mqtts|wss):/.test(m.url))
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
  return files;
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
