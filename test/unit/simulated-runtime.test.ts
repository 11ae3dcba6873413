/** The SIMULATED container driver of the fleet simulation: its conventions, and the Runtime contract it keeps. */
import { describe, expect, it } from "vitest";
import { EXIT_AFTER_MS, SimulatedRuntime, simulatedExit } from "../support/sim/simulated-runtime.js";
import { SIMULATED_IMAGE_CMD, SimulatedStore } from "../support/sim/simulated-store.js";

const spec = (command: string[], name = "c1") => ({ name, layers: ["/nonexistent/layer"], command });

describe("simulatedExit", () => {
  it.each([
    [["exit", "3"], { code: 3, afterMs: EXIT_AFTER_MS }],
    [["exit", "0", "250"], { code: 0, afterMs: 250 }],
    [["exit"], { code: 0, afterMs: EXIT_AFTER_MS }],
    [["simulated-service"], undefined],
    [["/bin/sh", "-c", "exit 3"], undefined],
  ])("reads %j as %j", (command, expected) => {
    expect(simulatedExit(command)).toEqual(expected);
  });

  it.each([[["exit", "256"]], [["exit", "x"]], [["exit", "1", "-5"]]])("refuses %j", (command) => {
    expect(() => simulatedExit(command)).toThrow(/expected \["exit", N/);
  });
});

describe("SimulatedRuntime", () => {
  it("validates specs with the real container schema and refuses a taken name", () => {
    const rt = new SimulatedRuntime();
    expect(() => rt.create({ name: "c1", layers: [], command: ["x"] })).toThrow(/layers: at least one layer/);
    rt.create(spec(["x"]));
    expect(() => rt.create(spec(["x"]))).toThrow(expect.objectContaining({ code: "E_CONFLICT" }));
    expect(() => rt.inspect("nope")).toThrow(expect.objectContaining({ code: "E_NOT_FOUND" }));
  });

  it("runs a container until it is stopped, which ends it with 128 + the signal", async () => {
    const rt = new SimulatedRuntime();
    rt.create(spec(SIMULATED_IMAGE_CMD));
    await expect(rt.wait("c1")).rejects.toMatchObject({ code: "E_CONFLICT" });
    await rt.start("c1");
    expect(rt.inspect("c1")).toMatchObject({ status: "running", pid: expect.any(Number) });
    await expect(rt.delete("c1")).rejects.toMatchObject({ code: "E_CONTAINER_RUNNING" });
    const waited = rt.wait("c1");
    expect(await rt.stop("c1", { signal: "SIGTERM" })).toMatchObject({ exitCode: 143, signal: 15 });
    expect(await waited).toMatchObject({ exitCode: 143 });
    expect(rt.inspect("c1").status).toBe("exited");
    await rt.delete("c1");
    expect(rt.list()).toEqual([]);
  });

  it('exits a container whose command is ["exit", N] with N shortly after its start', async () => {
    const rt = new SimulatedRuntime();
    rt.create(spec(["exit", "3", "20"]));
    await rt.start("c1");
    expect(rt.inspect("c1").status).toBe("running");
    expect(await rt.wait("c1")).toMatchObject({ exitCode: 3, signal: 0 });
    await expect(rt.exec("c1", ["true"])).rejects.toMatchObject({ code: "E_CONFLICT" });
  });

  it('answers an exec of ["exit", N] with N, any other with 0', async () => {
    const rt = new SimulatedRuntime();
    rt.create(spec(SIMULATED_IMAGE_CMD));
    await rt.start("c1");
    expect(await rt.exec("c1", ["exit", "1"])).toEqual({ exitCode: 1, output: "" });
    expect(await rt.exec("c1", ["/bin/true"])).toEqual({ exitCode: 0, output: "" });
  });
});

describe("SimulatedStore", () => {
  it("pulls any reference at once, as one layer under a directory that does not exist", async () => {
    const store = new SimulatedStore();
    const image = await store.pull("registry.local:5000/a/b:1");
    expect(store.images.get("registry.local:5000/a/b:1")).toEqual(image);
    expect(await store.pull("registry.local:5000/a/b:1")).toBe(image);
    expect(store.layerDirs(image)).toEqual([
      expect.stringMatching(/^\/nonexistent\/fleetlet-simulated\/layers\/[0-9a-f]{64}$/),
    ]);
  });
});
