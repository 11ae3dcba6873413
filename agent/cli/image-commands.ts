/** `fleetlet pull`, `images`, `rmi` and `prune`. */
import { formatBytes, parseBytes } from "../../schemas/quantity.js";
import { FleetError } from "../errors.js";
import { parsePlatform } from "../registry/platform.js";
import { formatReference, parseReference } from "../registry/reference.js";
import type { ParsedArgs } from "./args.js";
import type { Command } from "./command-line.js";
import type { CliContext } from "./context.js";
import { ago, formatTable } from "./output.js";

async function pull(ctx: CliContext, { options, positionals }: ParsedArgs): Promise<number> {
  if (positionals.length !== 1)
    throw new FleetError("E_INVALID_ARGUMENT", "pull: name one image, e.g. registry.local:5000/acme/web:1.2", {
      exitCode: 2,
    });
  const rateText = options["max-rate"] as string | undefined;
  const maxRate = rateText === undefined ? undefined : parseBytes(rateText);
  if (rateText !== undefined && maxRate === undefined)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `--max-rate: expected bytes per second such as 2M or 512k, got "${rateText}"`,
      { exitCode: 2 },
    );
  const platform = options.platform ? parsePlatform(options.platform as string) : undefined;
  const image = await ctx.pull(positionals[0]!, {
    ...(maxRate !== undefined ? { maxRate } : {}),
    quiet: options.quiet === true,
    unpack: options["download-only"] !== true,
    ...(platform ? { platform } : {}),
  });
  process.stdout.write(`${image.ref}@${image.digest}\n`);
  return 0;
}

async function listImages(ctx: CliContext, { options }: ParsedArgs): Promise<number> {
  const images = (await ctx.store()).images.list();
  if (options.json) {
    process.stdout.write(`${JSON.stringify(images, null, 2)}\n`);
    return 0;
  }
  const rows = images.map((i) => [
    i.ref,
    i.digest.slice(0, 19),
    i.platform,
    formatBytes(i.size),
    String(i.layers.length),
    ago(i.pulledAt),
  ]);
  process.stdout.write(formatTable(["IMAGE", "DIGEST", "PLATFORM", "SIZE", "LAYERS", "PULLED"], rows));
  return 0;
}

/** Layer dirs that containers on this device use, so removal never pulls one from under them. */
function layersInUse(ctx: CliContext): Set<string> {
  return new Set(ctx.runtime.list().flatMap((c) => c.spec.layers));
}

async function removeImages(ctx: CliContext, { options, positionals }: ParsedArgs): Promise<number> {
  if (positionals.length === 0)
    throw new FleetError("E_INVALID_ARGUMENT", "rmi: name at least one image", { exitCode: 2 });
  const store = await ctx.store();
  for (const name of positionals) {
    const ref = /^(sha256:)?[a-f0-9]{12,64}$/.test(name) ? name : formatReference(parseReference(name, "rmi"));
    const image = store.images.find(ref);
    if (!image) throw new FleetError("E_IMAGE_NOT_FOUND", `no such image: ${name}`);
    const users = ctx.runtime.list().filter((c) => store.layerDirs(image).some((d) => c.spec.layers.includes(d)));
    if (users.length > 0 && !options.force) {
      throw new FleetError(
        "E_IMAGE_IN_USE",
        `image ${image.ref} is used by container${users.length > 1 ? "s" : ""} ${users.map((c) => c.id).join(", ")}: remove them first, or use -f to untag it`,
      );
    }
    await store.images.remove(image.ref);
    process.stdout.write(`untagged ${image.ref}\n`);
  }
  const freed = await store.prune({ inUse: () => layersInUse(ctx), partials: false });
  process.stdout.write(`deleted ${freed.blobs} blobs and ${freed.snapshots} layers (${formatBytes(freed.bytes)})\n`);
  return 0;
}

async function prune(ctx: CliContext): Promise<number> {
  const store = await ctx.store();
  const r = await store.prune({ inUse: () => layersInUse(ctx) });
  process.stdout.write(
    `removed ${r.blobs} blobs, ${r.snapshots} layers and ${r.partials} partial downloads: ${formatBytes(r.bytes)} of blobs freed${r.expiredLeases ? `; ${r.expiredLeases} leases of processes that died expired` : ""}\n`,
  );
  return 0;
}

export const pullCommand: Command<CliContext> = {
  options: [
    { name: "max-rate", type: "string" },
    { name: "platform", type: "string" },
    { name: "quiet", short: "q", type: "boolean" },
    { name: "download-only", type: "boolean" },
  ],
  run: pull,
};
export const imagesCommand: Command<CliContext> = { options: [{ name: "json", type: "boolean" }], run: listImages };
export const rmiCommand: Command<CliContext> = {
  options: [{ name: "force", short: "f", type: "boolean" }],
  run: removeImages,
};
export const pruneCommand: Command<CliContext> = { options: [], run: prune };
