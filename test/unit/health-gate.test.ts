/**
 * The deployment's health gate on its own: its probation samples the
 * services every 100 ms, and looks once more as the window closes, so a
 * crash is caught even when the event loop stalls past the window's end.
 */
import { describe, expect, it } from "vitest";
import { HealthGate } from "../../agent/reconcile/health-gate.js";

/** Blocks the event loop for `ms`, as a busy agent on a loaded device can. */
const stall = (ms: number) => {
  const until = Date.now() + ms;
  while (Date.now() < until);
};

/** A gate over one started service whose health `judge` decides. */
function gateOver(judge: (calls: number) => string | undefined) {
  let calls = 0;
  const gate = new HealthGate("web.1", () => judge(++calls));
  gate.started.add("app");
  return { gate, calls: () => calls };
}

describe("a deployment's probation", () => {
  it("throws E_UNHEALTHY for a crash that lands while the loop is stalled past the window's end", async () => {
    // Healthy at the first look; the crash happens during the stall that follows it, while the gate pauses.
    const { gate, calls } = gateOver((n) => (n > 1 ? "restarting, last exit 3" : undefined));
    const probation = gate.probation(150, new AbortController().signal);
    expect(calls()).toBe(1);
    stall(250);
    await expect(probation).rejects.toMatchObject({
      code: "E_UNHEALTHY",
      message: expect.stringContaining("app (restarting, last exit 3)"),
    });
    expect(calls()).toBe(2);
  });

  it("resolves true when the service stays healthy to the window's end, having looked at its close", async () => {
    const looks: number[] = [];
    const { gate } = gateOver(() => {
      looks.push(Date.now());
      return undefined;
    });
    const t0 = Date.now();
    await expect(gate.probation(250, new AbortController().signal)).resolves.toBe(true);
    // Looks at 0, 100 and 200 ms, then at the close (250 ms), not only before it.
    expect(looks.length).toBeGreaterThanOrEqual(2);
    expect(looks.at(-1)! - t0).toBeGreaterThanOrEqual(249);
  });

  it("cut short, says whether the services were healthy at that moment", async () => {
    const abort = new AbortController();
    const healthy = gateOver((n) => {
      if (n === 1) abort.abort();
      return undefined;
    });
    await expect(healthy.gate.probation(5_000, abort.signal)).resolves.toBe(true);

    const late = new AbortController();
    const crashed = gateOver((n) => (n === 1 ? undefined : "failed, last exit 1"));
    setTimeout(() => late.abort(), 0);
    // The abort ends the pause; the next look finds the crash, and the cut run does not count as good.
    await expect(crashed.gate.probation(5_000, late.signal)).resolves.toBe(false);
  });
});
