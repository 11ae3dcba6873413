/**
 * Reads the MQTT 5 control packets out of one direction of a plaintext
 * connection (a counting proxy's tap), chunk by chunk: each packet's type
 * name, its size, and for a PUBLISH its topic, resolved through the topic
 * aliases that direction of the connection set up.
 */

const TYPES = [
  "reserved",
  "CONNECT",
  "CONNACK",
  "PUBLISH",
  "PUBACK",
  "PUBREC",
  "PUBREL",
  "PUBCOMP",
  "SUBSCRIBE",
  "SUBACK",
  "UNSUBSCRIBE",
  "UNSUBACK",
  "PINGREQ",
  "PINGRESP",
  "DISCONNECT",
  "AUTH",
] as const;

export interface MqttFrame {
  type: (typeof TYPES)[number];
  bytes: number;
  /** A PUBLISH's topic name (looked up when it came as a topic alias). */
  topic?: string;
  /** Whether a PUBLISH named its topic by an alias alone. */
  aliased?: boolean;
}

/** Bytes of an MQTT 5 variable byte integer at `at`, and its value. */
function varint(buf: Buffer, at: number): { value: number; size: number } {
  let value = 0;
  for (let i = 0; i < 4; i++) {
    const b = buf[at + i]!;
    value += (b & 0x7f) * 128 ** i;
    if ((b & 0x80) === 0) return { value, size: i + 1 };
  }
  throw new Error("mqtt-frames: a variable byte integer longer than 4 bytes");
}

/** The Topic Alias property (0x23) among a PUBLISH's properties, if any. */
function topicAlias(props: Buffer): number | undefined {
  const fixed: Record<number, number> = { 1: 1, 2: 4, 35: 2 };
  for (let at = 0; at < props.length; ) {
    const id = props[at++]!;
    if (id === 0x23) return props.readUInt16BE(at);
    if (fixed[id] !== undefined) at += fixed[id];
    else if (id === 0x0b) at += varint(props, at).size;
    else if (id === 0x26) {
      at += 2 + props.readUInt16BE(at);
      at += 2 + props.readUInt16BE(at);
    } else at += 2 + props.readUInt16BE(at); // response topic, correlation data, content type: length-prefixed
  }
  return undefined;
}

/** A PUBLISH's topic: named, or the one its alias stands for (set up by an earlier PUBLISH with both). */
function publishTopic(flags: number, body: Buffer, aliases: Map<number, string>): { topic: string; aliased: boolean } {
  const named = body.subarray(2, 2 + body.readUInt16BE(0)).toString();
  let at = 2 + body.readUInt16BE(0) + ((flags >> 1) & 3 ? 2 : 0);
  const { value: length, size } = varint(body, at);
  at += size;
  const alias = topicAlias(body.subarray(at, at + length));
  if (alias === undefined) return { topic: named, aliased: false };
  if (named) aliases.set(alias, named);
  return { topic: named || (aliases.get(alias) ?? `alias ${alias}?`), aliased: !named };
}

/** The length of the fixed header and the remaining length, or undefined while incomplete. */
function header(buf: Buffer): { size: number; remaining: number } | undefined {
  let remaining = 0;
  for (let i = 1; i < Math.min(buf.length, 5); i++) {
    const b = buf[i]!;
    remaining += (b & 0x7f) * 128 ** (i - 1);
    if ((b & 0x80) === 0) return { size: i + 1, remaining };
  }
  return undefined;
}

/** A parser for one direction: feed it chunks, it calls `onFrame` for every whole packet. */
export function mqttFrameReader(onFrame: (f: MqttFrame) => void): (chunk: Buffer) => void {
  let buf = Buffer.alloc(0);
  const aliases = new Map<number, string>();
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      const h = header(buf);
      if (!h || buf.length < h.size + h.remaining) return;
      const type = TYPES[buf[0]! >> 4]!;
      const body = buf.subarray(h.size, h.size + h.remaining);
      const publish = type === "PUBLISH" ? publishTopic(buf[0]! & 0x0f, body, aliases) : {};
      onFrame({ type, bytes: h.size + h.remaining, ...publish });
      buf = buf.subarray(h.size + h.remaining);
    }
  };
}
