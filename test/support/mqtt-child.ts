/**
 * An agent-like process for the last-will test: it opens an MqttSession from
 * the options in FLEETLET_TEST_SESSION (JSON: deviceId, url), says
 * "connected" on stdout, then waits to be killed without stop().
 * Run it with vite-node, which compiles it on the fly:
 *   node node_modules/vite-node/vite-node.mjs test/support/mqtt-child.ts
 */
import { MqttSession } from "../../agent/transport/mqtt-session.js";

export interface ChildSessionOptions {
  deviceId: string;
  url: string;
}

async function main(raw: string | undefined): Promise<void> {
  if (raw === undefined) throw new Error("FLEETLET_TEST_SESSION is not set");
  const opts = JSON.parse(raw) as ChildSessionOptions;
  const session = new MqttSession({
    deviceId: opts.deviceId,
    groups: [],
    mqtt: { url: opts.url, prefix: "fleet" },
    onDesired: () => {},
    agentVersion: "child",
    log: (line) => process.stderr.write(`${line}\n`),
  });
  await session.start();
  process.stdout.write("connected\n");
  // Nothing more: the session's socket keeps the process alive until the test kills it.
}

main(process.env.FLEETLET_TEST_SESSION).catch((err: Error) => {
  process.stderr.write(`mqtt-child: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
