/** `fleetctl status`: the devices' state from the broker, once or as it changes. */
import type { RolloutProgress } from "../../schemas/rollout.js";
import { type DeviceView, FleetView } from "../fleet/fleet-view.js";
import type { ParsedArgs } from "./args.js";
import type { Command } from "./command-line.js";
import { connect, type OperatorContext, usage } from "./fleet-commands.js";
import { ago, formatTable } from "./output.js";
import { retainedProgress, rolloutLine } from "./rollout-progress.js";

function deviceRow(d: DeviceView, now: number): string[] {
  const r = d.reported;
  const error = d.unreadable ?? (r?.lastError ? `${r.lastError.code}: ${r.lastError.message}` : "");
  return [
    d.deviceId,
    d.online === undefined ? "?" : d.online ? "yes" : "no",
    r?.deployment ?? "-",
    String(r?.generation ?? "-"),
    r?.phase ?? "-",
    r ? String(Object.keys(r.services).length) : "-",
    error.length > 60 ? `${error.slice(0, 59)}…` : error,
    // The reported doc goes out when it changes: its ts is the last change, not a sign of life (ONLINE is).
    r ? ago(r.ts, now) : "",
  ];
}

function deviceJson(d: DeviceView): object {
  return {
    deviceId: d.deviceId,
    online: d.online ?? null,
    reported: d.reported ?? null,
    ...(d.unreadable ? { unreadable: d.unreadable } : {}),
  };
}

/** The whole picture: a JSON array, or the rollout's line, a count and a table. */
function render(view: FleetView, group: string | undefined, progress: RolloutProgress | undefined, json: boolean) {
  const devices = view.list(group);
  if (json) return `${JSON.stringify(devices.map(deviceJson))}\n`;
  const now = Date.now();
  const online = devices.filter((d) => d.online).length;
  return `${progress ? rolloutLine(progress) : ""}${devices.length} device(s)${group ? ` in group ${group}` : ""}, ${online} online\n${formatTable(
    ["DEVICE", "ONLINE", "DEPLOYMENT", "GEN", "PHASE", "SERVICES", "LAST ERROR", "CHANGED"],
    devices.map((d) => deviceRow(d, now)),
  )}`;
}

/** Until SIGINT or SIGTERM: one JSON line per update, or the table redrawn at most once a second. */
async function watch(view: FleetView, redraw: () => string, json: boolean): Promise<void> {
  let dirty = false;
  view.onChange((d) => {
    // As JSON, each update is a line of its own: the stream an aggregator consumes.
    if (json) process.stdout.write(`${JSON.stringify(deviceJson(d))}\n`);
    else dirty = true;
  });
  const tty = process.stdout.isTTY && !json;
  const timer = setInterval(() => {
    if (!dirty) return;
    dirty = false;
    process.stdout.write(tty ? `\x1b[H\x1b[2J${redraw()}` : redraw());
  }, 1000);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  clearInterval(timer);
}

async function status(ctx: OperatorContext, { options }: ParsedArgs): Promise<number> {
  if (options.share && !options.watch)
    throw usage("status: --share splits live updates between instances; it needs --watch");
  const group = options.group as string | undefined;
  const json = options.json === true;
  const client = await connect(ctx);
  try {
    const progress = group ? await retainedProgress(client, group) : undefined;
    const view = await FleetView.open(client, options.share ? { share: options.share as string } : {});
    const redraw = () => render(view, group, progress, json);
    process.stdout.write(redraw());
    if (options.watch) await watch(view, redraw, json);
    return 0;
  } finally {
    await client.close();
  }
}

export const statusCommand: Command<OperatorContext> = {
  options: [
    { name: "group", type: "string" },
    { name: "watch", type: "boolean" },
    { name: "json", type: "boolean" },
    { name: "share", type: "string" },
  ],
  run: status,
};
