/**
 * What this machine allows a download at all. The registry serves on the
 * same cores as the client, so no client's wall time can beat the CPU both
 * ends spent, spread over every core: (client CPU + registry CPU) / cores.
 * The pull bench prints that bound beside each measured wall, and the
 * client CPU a wall goal would leave, against the crypto that no client
 * avoids: TLS decryption and SHA-256 of every byte, timed here in one core.
 */
import { createDecipheriv, createHash, randomBytes } from "node:crypto";
import { availableParallelism } from "node:os";

/** Wall and CPU (user + sys of the process tree) ms of one run; server: the registry's CPU ms over it. */
export interface Cost {
  wall: number;
  cpu: number;
  server?: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

/** One core's time to decrypt (AES-128-GCM, TLS 1.3's usual suite) and hash `bytes`, in TLS-record-sized pieces. */
export function cryptoMs(bytes: number): number {
  const piece = randomBytes(16384);
  const t0 = performance.now();
  const tls = createDecipheriv("aes-128-gcm", randomBytes(16), randomBytes(12));
  const digest = createHash("sha256");
  for (let n = 0; n < bytes; n += piece.length) digest.update(tls.update(piece));
  digest.digest();
  return performance.now() - t0;
}

/** Prints each download's bound beside its wall, then what the wall goal leaves the client. */
export function printCoreBound(runs: [string, Cost[]][], anchor: Cost[], goalRatio: number, bytes: number): void {
  const cores = availableParallelism();
  console.log(
    `\ndownload, registry and client on the same ${cores} cores: no wall beats (client CPU + registry CPU) / ${cores}`,
  );
  for (const [name, costs] of runs) {
    const cpu = median(costs.map((c) => c.cpu));
    const server = median(costs.map((c) => c.server ?? Number.NaN));
    console.log(
      `  ${name.padEnd(20)} client ${s(cpu)} + registry ${s(server)}: wall >= ${s((cpu + server) / cores)}, measured ${s(median(costs.map((c) => c.wall)))}`,
    );
  }
  const goalWall = goalRatio * median(anchor.map((c) => c.wall));
  const server = median(anchor.map((c) => c.server ?? Number.NaN));
  console.log(
    `  a wall of ${goalRatio}x the anchor's (${s(goalWall)}) leaves a client at most ${s(goalWall * cores - server)} of CPU; ` +
      `TLS decryption and SHA-256 alone take ${s(cryptoMs(bytes))} of one core`,
  );
}
