/**
 * db.json shared between processes: every change is a read-modify-write
 * under one lock, so no writer's change is lost, and a writer killed while
 * it holds the lock blocks no one.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { StateDb } from "../../agent/state/db.js";
import { loadNative } from "../../agent/system/native.js";

const native = loadNative().core;
const dirs: string[] = [];
const fresh = () => {
  const dir = mkdtempSync(join(tmpdir(), "fleetlet-db-"));
  dirs.push(dir);
  return dir;
};

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const record = (n: string) => ({
  containerId: n,
  hash: "h",
  image: "i",
  digest: "d",
  restarts: 0,
  deployment: "x",
  spec: {},
});

describe("db.json between writers", () => {
  it("keeps every writer's change when two of them interleave their updates", async () => {
    const root = fresh();
    const [a, b] = await Promise.all([StateDb.open(root, native), StateDb.open(root, native)]);
    const writes = Array.from({ length: 40 }, (_, i) =>
      (i % 2 ? a : b).update((d) => {
        d.services[`svc-${i}`] = record(`c-${i}`) as never;
      }),
    );
    await Promise.all(writes);
    const onDisk = JSON.parse(readFileSync(join(root, "db.json"), "utf8"));
    expect(Object.keys(onDisk.services).length).toBe(40);
    await a.refresh();
    expect(Object.keys(a.data.services).length).toBe(40);
  });

  it("leaves the file alone for an update that changes nothing, and writes the next one that does", async () => {
    const root = fresh();
    const [a, b] = await Promise.all([StateDb.open(root, native), StateDb.open(root, native)]);
    await a.update((d) => {
      d.services.web = record("c-1") as never;
    });
    const file = join(root, "db.json");
    const before = statSync(file, { bigint: true });
    // The same record again, from the writer that wrote it and from one that must read it first.
    for (const db of [a, b, a])
      await db.update((d) => {
        d.services.web = record("c-1") as never;
      });
    const after = statSync(file, { bigint: true });
    expect([after.ino, after.mtimeNs, after.ctimeNs]).toEqual([before.ino, before.mtimeNs, before.ctimeNs]);
    await b.update((d) => {
      d.services.web!.restarts = 1;
    });
    expect(statSync(file).ino).not.toBe(Number(before.ino));
    await a.refresh();
    expect(a.data.services.web?.restarts).toBe(1);
  });

  it("writes a burst of changes once, in call order, each caller resolved with its own result", async () => {
    const root = fresh();
    const db = await StateDb.open(root, native);
    const before = db.writeCount;
    const order: number[] = [];
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        db.update((d) => {
          order.push(i);
          d.services[`svc-${i}`] = record(`c-${i}`) as never;
          return i * 2;
        }),
      ),
    );
    expect(results).toEqual(Array.from({ length: 20 }, (_, i) => i * 2));
    expect(order).toEqual(Array.from({ length: 20 }, (_, i) => i));
    // The first change is written alone; the nineteen called for meanwhile share the next write.
    expect(db.writeCount - before).toBe(2);
    const onDisk = JSON.parse(readFileSync(join(root, "db.json"), "utf8"));
    expect(Object.keys(onDisk.services)).toHaveLength(20);
  });

  it("drops only the change that throws from a shared write: its half-made edit too", async () => {
    const root = fresh();
    const db = await StateDb.open(root, native);
    const outcomes = await Promise.allSettled([
      db.update((d) => {
        d.generation = 1;
      }),
      db.update((d) => {
        d.services.a = record("a") as never;
      }),
      db.update((d) => {
        d.services.half = record("half") as never;
        throw new Error("refused half-way");
      }),
      db.update((d) => {
        d.services.b = record("b") as never;
        return "b written";
      }),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "fulfilled", "rejected", "fulfilled"]);
    expect((outcomes[2] as PromiseRejectedResult).reason.message).toBe("refused half-way");
    expect((outcomes[3] as PromiseFulfilledResult<string>).value).toBe("b written");
    const onDisk = JSON.parse(readFileSync(join(root, "db.json"), "utf8"));
    expect(Object.keys(onDisk.services).sort()).toEqual(["a", "b"]);
    expect(onDisk.generation).toBe(1);
    expect(Object.keys(db.data.services).sort()).toEqual(["a", "b"]);
  });

  it("is not blocked by a writer killed while it held the lock", async () => {
    const root = fresh();
    const db = await StateDb.open(root, native);
    await db.update((d) => {
      d.generation = 1;
    });
    // Another process takes the lock with flock(1) (-o: the lock stays with it, not its child) and is killed holding it.
    const lock = join(root, "db.json.lock");
    const holder = spawn("flock", ["-x", "-o", lock, "sh", "-c", "echo locked; exec sleep 10"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    await once(holder.stdout!, "data"); // its command runs once flock holds the lock
    let done = false;
    const update = db
      .update((d) => {
        d.generation = 2;
      })
      .then(() => {
        done = true;
      });
    await new Promise((r) => setTimeout(r, 300));
    expect(done).toBe(false); // it waits for the live holder
    holder.kill("SIGKILL");
    await once(holder, "exit");
    await update;
    expect(JSON.parse(readFileSync(join(root, "db.json"), "utf8")).generation).toBe(2);
  });

  it("names the field at fault when db.json is corrupt, and changes nothing", async () => {
    const root = fresh();
    writeFileSync(join(root, "db.json"), JSON.stringify({ images: { x: { ref: 1 } } }));
    await expect(StateDb.open(root, native)).rejects.toThrow(/db\.json: images\.x\.ref: .*move it aside/);
    expect(JSON.parse(readFileSync(join(root, "db.json"), "utf8"))).toEqual({ images: { x: { ref: 1 } } });
  });
});

describe("db.json written by an older agent", () => {
  // A service and its documents as the agent before devices and networks stored them.
  const oldSpec = {
    image: `registry.local:5000/acme/web@sha256:${"a".repeat(64)}`,
    env: {},
    restart: "always",
    resources: {},
    volumes: [],
    network: "none",
    readOnlyRootfs: false,
    stopSignal: "SIGTERM",
    stopTimeoutMs: 10000,
  };
  const oldDoc = { apiVersion: "fleetlet/v1", deployment: "web-1", generation: 3, services: { web: oldSpec } };

  it("is read with the fields added since at their defaults, so nothing trips over a missing list", async () => {
    const root = fresh();
    const data = {
      images: {},
      desired: oldDoc,
      lastGood: oldDoc,
      previousGood: null,
      services: { web: { ...record("web.1"), spec: oldSpec } },
      generation: 3,
      generations: { device: 3 },
      desiredSource: "device",
      leases: {},
    };
    writeFileSync(join(root, "db.json"), JSON.stringify(data));
    const db = await StateDb.open(root, native);
    const added = { init: false, devices: [], groupAdd: [], networks: [], ports: [] };
    expect(db.data.services.web!.spec).toEqual({ ...oldSpec, ...added });
    for (const doc of [db.data.desired!, db.data.lastGood!]) {
      expect(doc.networks).toEqual({});
      expect(doc.services.web).toEqual({ ...oldSpec, ...added });
    }
    // A later field of the stored spec is kept as it was, not replaced by a default.
    writeFileSync(
      join(root, "db.json"),
      JSON.stringify({ ...data, services: { web: { ...record("web.1"), spec: { ...oldSpec, init: true } } } }),
    );
    expect((await StateDb.open(root, native)).data.services.web!.spec.init).toBe(true);
  });
});

describe("db.json's cost to the daemon", () => {
  it("is read, written and locked without loading node:fs/promises (readline and REPL history come with it)", async () => {
    const root = fresh();
    const dist = new URL("../../dist/agent/", import.meta.url).pathname;
    const script = `
      const { StateDb } = await import(${JSON.stringify(`${dist}state/db.js`)});
      const { loadNative } = await import(${JSON.stringify(`${dist}system/native.js`)});
      const db = await StateDb.open(${JSON.stringify(root)}, loadNative().core);
      await db.update((d) => { d.generation = 7; });
      await db.refresh();
      console.log(JSON.stringify({ generation: db.data.generation, loaded: process.moduleLoadList.filter((m) => m.endsWith(" fs/promises")) }));
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    await once(child, "close");
    expect(JSON.parse(out)).toEqual({ generation: 7, loaded: [] });
  });
});
