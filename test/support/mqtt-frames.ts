/**
 * Reads the MQTT control packets out of one direction of a plaintext
 * connection (a counting proxy's tap), chunk by chunk: each packet's type
 * name, its size, and for a PUBLISH its topic.
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
  /** A PUBLISH's topic name (empty when it uses a topic alias). */
  topic?: string;
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
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      const h = header(buf);
      if (!h || buf.length < h.size + h.remaining) return;
      const type = TYPES[buf[0]! >> 4]!;
      const body = buf.subarray(h.size, h.size + h.remaining);
      const topic = type === "PUBLISH" ? body.subarray(2, 2 + body.readUInt16BE(0)).toString() : undefined;
      onFrame({ type, bytes: h.size + h.remaining, ...(topic === undefined ? {} : { topic }) });
      buf = buf.subarray(h.size + h.remaining);
    }
  };
}
