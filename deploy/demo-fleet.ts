/**
 * The fleet part of `npm run demo`: a mosquitto with client certificates and
 * the ACL `fleetctl acl` renders, three real agents in group "pilot" that
 * trust one signing key, and an operator who rolls a signed deployment out in
 * waves, watches the fleet table, sees a broken deployment halt after its
 * first wave and roll back, and sees a tampered document refused.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import mqtt from "mqtt";
import { inRolloutWave } from "../agent/protocol/waves.js";
import { freePort } from "../test/support/free-port.js";
import { startMosquitto } from "../test/support/mosquitto.js";
import { startRegistry } from "../test/support/registry.js";
import { waitFor } from "../test/support/wait-for.js";

const DEVICES = ["pilot-a", "pilot-b", "pilot-c"];

/** A deployment name whose 34% wave holds exactly one of the three devices, so the waves are visible. */
function deploymentFor(base: string): string {
  for (let i = 1; ; i++)
    if (DEVICES.filter((d) => inRolloutWave(d, `${base}.${i}`, 34)).length === 1) return `${base}.${i}`;
}

export async function fleetDemo(opts: {
  work: string;
  rootfs: string;
  bins: { fleetlet: string; fleetctl: string };
  step: (title: string, run: () => Promise<boolean>) => Promise<void>;
}): Promise<void> {
  const { work, step, bins } = opts;
  const fleetctl = (args: string[], show = true) => {
    const r = spawnSync(process.execPath, [bins.fleetctl, ...args], { encoding: "utf8" });
    if (show)
      console.log(
        `  $ fleetctl ${args.map((a) => (a.includes("/") ? basename(a) : a)).join(" ")}\n${`${r.stderr}${r.stdout}`.trimEnd().replace(/^/gm, "    ")}`,
      );
    return r;
  };
  const inventory = join(work, "inventory.json");
  writeFileSync(
    inventory,
    JSON.stringify({ devices: Object.fromEntries(DEVICES.map((d) => [d, ["pilot"]])), operators: ["ops"] }, null, 2),
  );
  writeFileSync(join(work, "acl"), fleetctl(["acl", inventory], false).stdout);
  const [reg, broker] = await Promise.all([
    startRegistry({ auth: "htpasswd" }),
    startMosquitto({ clientCerts: true, aclFile: join(work, "acl") }),
  ]);
  const registries = { [reg.host]: { username: reg.username, password: reg.password, ca: reg.caFile } };
  const ops = join(work, "ops.json");
  writeFileSync(
    ops,
    JSON.stringify({ mqtt: { url: broker.url, ca: broker.caFile, ...broker.clientCert("ops") }, registries }),
  );
  const image = `${reg.host}/demo/fleet:1`;
  const agents: ChildProcess[] = [];
  const roots = DEVICES.map((d) => join(work, `state-${d}`));
  const doc = (name: string, deployment: string, command: string) => {
    const file = join(work, `${name}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: "fleetlet/v1",
        deployment,
        services: { web: { image, command: ["/bin/sh", "-c", command], restart: "never", stopTimeoutMs: 300 } },
        update: { healthyWithinMs: 2000 },
      }),
    );
    return file;
  };
  console.log(
    `\nlocal broker ${broker.url} (client certificates, the ACL from \`fleetctl acl\`), local TLS registry ${reg.host}`,
  );
  try {
    await step("Make a signing key, push an image, start three agents that trust the key", async () => {
      const key = fleetctl(["keygen", join(work, "ops.key")]);
      if (fleetctl(["--config", ops, "push", opts.rootfs, image], false).status !== 0) return false;
      for (const [i, id] of DEVICES.entries()) {
        const config = join(work, `${id}.json`);
        writeFileSync(
          config,
          JSON.stringify({
            deviceId: id,
            groups: ["pilot"],
            mqtt: { url: broker.url, ca: broker.caFile, ...broker.clientCert(id) },
            registries,
            api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, `${id}.sock`) },
            trustedKeys: [key.stdout.trim()],
          }),
        );
        agents.push(
          spawn(
            process.execPath,
            [bins.fleetlet, "--root", roots[i]!, "--config", config, "agent", "--heartbeat", "2"],
            { stdio: "ignore" },
          ),
        );
      }
      // A timeout is said here, and the step still shows the table and fails on it.
      await waitFor(
        "the three agents online",
        () => /3 online/.test(fleetctl(["--config", ops, "status", "--group", "pilot"], false).stdout),
        { timeoutMs: 10_000, intervalMs: 200 },
      ).catch((err: Error) => console.log(`    ${err.message}`));
      return fleetctl(["--config", ops, "status", "--group", "pilot"]).stdout.includes("3 online");
    });
    await step("Roll a signed deployment out in waves 34,100: the broker fans each wave out", async () => {
      const r = fleetctl([
        "--config",
        ops,
        "rollout",
        "--group",
        "pilot",
        doc("good", deploymentFor("web-good"), "exec sleep 100000"),
        "--waves",
        "34,100",
        "--healthy-within",
        "60s",
        "--sign-key",
        join(work, "ops.key"),
      ]);
      fleetctl(["--config", ops, "status", "--group", "pilot"]);
      return r.status === 0;
    });
    await step("Roll out a broken deployment: it halts after the first wave, which rolls back", async () => {
      const r = fleetctl([
        "--config",
        ops,
        "rollout",
        "--group",
        "pilot",
        doc("broken", deploymentFor("web-broken"), "echo crashing; exit 1"),
        "--waves",
        "34,100",
        "--healthy-within",
        "60s",
        "--max-failures",
        "0",
        "--sign-key",
        join(work, "ops.key"),
      ]);
      await new Promise((res) => setTimeout(res, 2500));
      fleetctl(["--config", ops, "status", "--group", "pilot"]);
      return r.status === 1 && /halted/.test(r.stdout);
    });
    await step("A tampered document is refused with E_BAD_SIGNATURE; the service keeps running", async () => {
      const forged = {
        ...JSON.parse(readFileSync(doc("own", "own-1", "exec sleep 100001"), "utf8")),
        generation: 1000,
        signature: Buffer.alloc(64, 1).toString("base64"),
      };
      const op = broker.clientCert("ops");
      const client = mqtt.connect(broker.url, {
        ca: readFileSync(broker.caFile),
        cert: readFileSync(op.cert),
        key: readFileSync(op.key),
      });
      await new Promise((r) => client.once("connect", r));
      console.log(`  operator publishes a document with a forged signature to fleet/devices/pilot-a/desired`);
      await client.publishAsync("fleet/devices/pilot-a/desired", JSON.stringify(forged), { qos: 1, retain: true });
      client.end();
      await new Promise((res) => setTimeout(res, 1500));
      const status = fleetctl(["--config", ops, "status", "--group", "pilot"]);
      return /pilot-a\s.*rejected\s.*E_BAD_SIGNATURE/.test(status.stdout);
    });
  } finally {
    for (const a of agents) a.kill("SIGTERM");
    await Promise.all(agents.map((a) => (a.exitCode === null ? new Promise((r) => a.once("exit", r)) : undefined)));
    for (const root of roots) {
      const ids =
        spawnSync(process.execPath, [bins.fleetlet, "--root", root, "ps", "-a", "--json"], { encoding: "utf8" })
          .stdout.match(/"id": "[^"]+"/g)
          ?.map((m) => m.slice(7, -1)) ?? [];
      if (ids.length) spawnSync(process.execPath, [bins.fleetlet, "--root", root, "rm", "-f", ...ids]);
    }
    await Promise.all([reg.stop(), broker.stop()]);
  }
}
