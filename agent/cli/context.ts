/**
 * What the device commands share: the state root, the device config, and
 * the runtime and image store, opened only when a command needs them.
 */
import type { DeviceConfig } from "../../schemas/config.js";
import { FleetError } from "../errors.js";
import type { PullEvent } from "../registry/pull.js";
import { formatReference, parseReference } from "../registry/reference.js";
import type { RegistryClients } from "../registry/registry-clients.js";
import { Runtime } from "../runtime/runtime.js";
import { type ImageDefaults, imageDefaults } from "../store/image-defaults.js";
import type { ImageRecord } from "../store/image-store.js";
import type { Lease } from "../store/leases.js";
import { imageContent, LocalStore } from "../store/local-store.js";
import { loadNative } from "../system/native.js";
import { workerNodeFlags } from "../system/process-memory.js";
import { PULL_WORKER_IDLE_MS, pullInWorker } from "./pull-process.js";

export interface PullOpts {
  maxRate?: number;
  quiet?: boolean;
  unpack?: boolean;
  platform?: import("../registry/platform.js").Platform;
  onEvent?: (e: PullEvent) => void;
  signal?: AbortSignal;
  lease?: Lease;
}

export class CliContext {
  private runtimeInstance: Runtime | undefined;
  private storeInstance: Promise<LocalStore> | undefined;
  /** Kept across pulls: their connections, tokens, and the tags resolved under a deployment's lease. */
  private registryClients: RegistryClients | undefined;
  /** Set by the daemon: pulls run in a pull worker running this CLI script (pull-process.ts). */
  private workerScript: string | undefined;

  constructor(
    readonly root: string,
    readonly config: DeviceConfig,
  ) {}

  get runtime(): Runtime {
    this.runtimeInstance ??= new Runtime({ root: this.root, devRoot: this.config.devRoot });
    return this.runtimeInstance;
  }

  store(): Promise<LocalStore> {
    this.storeInstance ??= LocalStore.open(this.root, loadNative().core);
    return this.storeInstance;
  }

  /** From now on, each pull runs in a child process running `script` (`fleetlet`'s CLI), not in this one. */
  pullInWorkers(script: string): void {
    this.workerScript = script;
  }

  /** A pull in a pull worker; undefined when none could start (then this and later pulls run here). */
  private async pullInWorker(
    ref: string,
    opts: PullOpts,
    onEvent: (e: PullEvent) => void,
  ): Promise<ImageRecord | undefined> {
    const request = {
      root: this.root,
      config: this.config,
      ref,
      unpack: opts.unpack !== false,
      ...(opts.maxRate !== undefined ? { maxRate: opts.maxRate } : {}),
      ...(opts.platform ? { platform: opts.platform } : {}),
      ...(opts.lease ? { leaseId: opts.lease.id } : {}),
    };
    const workerOpts = {
      script: this.workerScript!,
      execArgv: workerNodeFlags(process.execArgv),
      idleMs: PULL_WORKER_IDLE_MS,
      onEvent,
      ...(opts.signal ? { signal: opts.signal } : {}),
    };
    try {
      const image = await pullInWorker(request, workerOpts);
      await (await this.store()).db.refresh(); // the records and snapshots the worker wrote
      return image;
    } catch (err) {
      if ((err as FleetError).code !== "E_PULL_WORKER") throw err;
      process.stderr.write(`fleetlet: warning: ${(err as Error).message}; pulling in the agent's process\n`);
      this.workerScript = undefined;
      return undefined;
    }
  }

  /** Pulls with progress on stderr: bars on a terminal, throttled lines elsewhere. */
  async pull(ref: string, opts: PullOpts = {}): Promise<ImageRecord> {
    const store = await this.store();
    const onEvent = opts.onEvent ?? (await eventPrinter(opts.quiet === true));
    if (this.workerScript) {
      const image = await this.pullInWorker(ref, opts, onEvent);
      if (image) return image;
    }
    // Loaded on demand: the HTTP stack costs a container command that needs no registry.
    const { pullImage, storePullDeps } = await import("../registry/pull.js");
    const { RegistryClients } = await import("../registry/registry-clients.js");
    this.registryClients ??= new RegistryClients();
    const abort = new AbortController();
    opts.signal?.addEventListener("abort", () => abort.abort(opts.signal?.reason), { once: true });
    const onSignal = () =>
      abort.abort(new FleetError("E_ABORTED", `pull of ${ref} interrupted; run it again to resume`));
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    try {
      return await pullImage(ref, storePullDeps(store, this.config.registries, this.registryClients), {
        maxRateBytesPerSec: opts.maxRate ?? this.config.pull.maxRateBytesPerSec,
        concurrency: this.config.pull.concurrency,
        signal: abort.signal,
        unpack: opts.unpack !== false,
        ...(opts.platform ? { platform: opts.platform } : {}),
        onEvent,
        ...(opts.lease ? { lease: opts.lease } : {}),
      });
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  }

  /**
   * The image's defaults for `run`, pulling it first when the store lacks it.
   * Its content is added to `lease` before anything checks that it is there.
   */
  async imageDefaults(name: string, lease: Lease): Promise<ImageDefaults> {
    const store = await this.store();
    const ref = /^(sha256:)?[a-f0-9]{12,64}$/.test(name) ? name : formatReference(parseReference(name));
    const stored = store.images.find(ref);
    if (stored) await lease.add(imageContent(stored));
    const image = stored ?? (await this.pull(ref, { lease }));
    const record = store.isWhole(image) ? image : await this.pull(image.ref, { lease });
    return imageDefaults(store, record);
  }
}

/** Progress on stderr: bars on a terminal, throttled lines elsewhere; warnings (an xattr a layer may not set) even when quiet. */
async function eventPrinter(quiet: boolean): Promise<(e: PullEvent) => void> {
  if (quiet) return (e) => (e.type === "warning" ? printEvent(e) : undefined);
  const { ProgressBars, throttleProgress } = await import("../registry/pull-progress.js");
  return process.stderr.isTTY ? new ProgressBars(process.stderr).handle : throttleProgress(printEvent, 1000);
}

function printEvent(e: PullEvent): void {
  const short = (d: string) => d.slice(7, 19);
  if (e.type === "resolved")
    process.stderr.write(
      `pulling ${e.ref} (${e.digest}): ${e.layers.filter((l) => !l.present).length} of ${e.layers.length} layers to fetch\n`,
    );
  else if (e.type === "progress")
    process.stderr.write(
      `  ${short(e.layer)} ${Math.floor((100 * e.done) / Math.max(1, e.total))}% (${e.done}/${e.total} bytes)\n`,
    );
  else if (e.type === "unpacked") process.stderr.write(`  ${short(e.layer)} unpacked\n`);
  else if (e.type === "warning") process.stderr.write(`fleetlet: warning: ${e.message}\n`);
  else if (e.type === "done")
    process.stderr.write(`pulled ${e.ref}: ${e.fetchedBytes} bytes fetched in ${(e.ms / 1000).toFixed(1)} s\n`);
}
