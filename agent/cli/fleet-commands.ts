/** `fleetctl keygen` and `deploy`, and what the operator's broker commands share. */
import { loadDeviceConfig } from "../config/device-config.js";
import { FleetError } from "../errors.js";
import { finishDocument, pickGeneration, readDocumentFile, retainedDocument } from "../fleet/desired-document.js";
import { FleetClient } from "../fleet/fleet-client.js";
import { parseDuration } from "../fleet/rollout.js";
import { generateSigningKey, loadSigningKey } from "../protocol/signature.js";
import type { ParsedArgs } from "./args.js";
import type { Command } from "./command-line.js";

/** What every fleetctl command is given: the config file named by `--config`, if any. */
export interface OperatorContext {
  configPath: string | undefined;
}

export const usage = (msg: string) => new FleetError("E_INVALID_ARGUMENT", msg, { exitCode: 2 });

/** `--valid-for DURATION`, when given: how long a published document stays acceptable (its notAfter). */
export function validFor(options: ParsedArgs["options"]): { validForMs?: number } {
  const text = options["valid-for"] as string | undefined;
  return text === undefined ? {} : { validForMs: parseDuration(text, "--valid-for") };
}

/** The broker named by the config's mqtt section. */
export function connect(ctx: OperatorContext): Promise<FleetClient> {
  return FleetClient.connect(loadDeviceConfig(ctx.configPath).mqtt);
}

function keygen(_ctx: OperatorContext, { positionals }: ParsedArgs): number {
  if (positionals.length !== 1) throw usage("keygen: name the private key file to write, e.g. fleetctl keygen ops.key");
  let pub: string;
  try {
    pub = generateSigningKey(positionals[0]!);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST")
      throw new FleetError("E_CONFLICT", `keygen: ${positionals[0]} already exists; it is not overwritten`, {
        exitCode: 2,
      });
    throw err;
  }
  process.stdout.write(`${pub}\n`);
  process.stderr.write(
    `private key in ${positionals[0]} (mode 0600), public key in ${positionals[0]}.pub; add the public key to the devices' "trustedKeys"\n`,
  );
  return 0;
}

async function deploy(ctx: OperatorContext, { options, positionals }: ParsedArgs): Promise<number> {
  if (positionals.length !== 1 || Boolean(options.device) === Boolean(options.group))
    throw usage("deploy: expected --device ID or --group G, and one FILE");
  const file = positionals[0]!;
  const raw = readDocumentFile(file);
  const target = options.device ? `device/${options.device as string}` : `group/${options.group as string}`;
  const valid = validFor(options);
  // Refused before the broker is reached.
  finishDocument(
    raw,
    { generation: typeof raw.generation === "number" ? raw.generation : 1, target, ...valid },
    { file },
  );
  const key = options["sign-key"] ? loadSigningKey(options["sign-key"] as string) : undefined;
  const client = await connect(ctx);
  try {
    const topic = options.device
      ? client.topics.device(options.device as string, "desired")
      : client.topics.groupDesired(options.group as string);
    const generation = pickGeneration(raw, await retainedDocument(client, topic), topic);
    const { payload, doc } = finishDocument(raw, { generation, target, ...valid }, { file, ...(key ? { key } : {}) });
    await client.publish(topic, payload, { retain: true });
    process.stdout.write(
      `published deployment ${doc.deployment} generation ${generation} to ${topic} (${payload.length} bytes, ${key ? "signed" : "unsigned"}${doc.notAfter ? `, valid until ${doc.notAfter}` : ""})\n`,
    );
    return 0;
  } finally {
    await client.close();
  }
}

export const keygenCommand: Command<OperatorContext> = { options: [], run: keygen };
export const deployCommand: Command<OperatorContext> = {
  options: [
    { name: "device", type: "string" },
    { name: "group", type: "string" },
    { name: "sign-key", type: "string" },
    { name: "valid-for", type: "string" },
  ],
  run: deploy,
};
