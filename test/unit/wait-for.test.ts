/** The tests' one polling wait: what it resolves with, and what its timeout says. */
import { describe, expect, it } from "vitest";
import { waitFor } from "../support/wait-for.js";

describe("waitFor", () => {
  it("resolves with the first truthy value the probe returns", async () => {
    let calls = 0;
    const value = await waitFor("the third call", () => (++calls >= 3 ? { calls } : undefined), { intervalMs: 1 });
    expect(value).toEqual({ calls: 3 });
  });

  it("asks again when the probe throws, and awaits a probe that returns a promise", async () => {
    let calls = 0;
    const value = await waitFor(
      "a file that appears",
      async () => {
        if (++calls < 3) throw new Error("ENOENT: not there yet");
        return "there";
      },
      { intervalMs: 1 },
    );
    expect(value).toBe("there");
  });

  it("names what it awaited and shows the last value when time runs out", async () => {
    await expect(
      waitFor("a queue to fill", () => [].length, {
        timeoutMs: 30,
        intervalMs: 5,
        context: () => "queued: nothing",
      }),
    ).rejects.toThrow("timed out after 30 ms waiting for a queue to fill; last value: 0; queued: nothing");
  });

  it("shows the probe's last error when time runs out", async () => {
    await expect(
      waitFor(
        "the socket",
        () => {
          throw new Error("connect ECONNREFUSED");
        },
        { timeoutMs: 20, intervalMs: 5 },
      ),
    ).rejects.toThrow("timed out after 20 ms waiting for the socket; last error: connect ECONNREFUSED");
  });
});
