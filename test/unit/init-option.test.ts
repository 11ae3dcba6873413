/**
 * `init` from where it is asked for (a desired document's service, `fleetlet
 * run --init`) to the record the shim reads: off unless asked for.
 */
import { describe, expect, it } from "vitest";
import { parseCommandLine } from "../../agent/cli/command-line.js";
import { FLEETLET_COMMANDS, FLEETLET_GLOBALS } from "../../agent/cli/fleetlet.js";
import { parseRun, runSpec } from "../../agent/cli/run-command.js";
import { serviceContainerSpec } from "../../agent/reconcile/service-container.js";
import { containerPaths } from "../../agent/runtime/container-dir.js";
import { encodeShimConfig } from "../../agent/runtime/shim-config.js";
import { type ContainerSpecInput, containerSpec } from "../../schemas/container.js";
import { desiredState } from "../../schemas/desired.js";

const IMAGE = {
  ref: "registry.local:5000/acme/web:1",
  layers: ["/var/lib/fleetlet/layers/abc"],
  entrypoint: [],
  cmd: ["sleep", "1000"],
  env: [],
};

/** The shim config's records, as the shim splits them. */
function shimRecords(input: ContainerSpecInput): string[] {
  const spec = containerSpec.parse(input);
  const config = encodeShimConfig({
    id: "c1",
    spec,
    env: [],
    hostname: "c1",
    paths: containerPaths("/var/lib/fleetlet", "c1"),
    cgroups: { dirs: new Map(), oomFile: null, writes: [], devices: null },
    capabilities: [],
    volumeDir: (n) => `/var/lib/fleetlet/volumes/${n}`,
  });
  return config.toString().split("\0");
}

function serviceRecords(service: Record<string, unknown>): string[] {
  const doc = desiredState.parse({
    apiVersion: "fleetlet/v1",
    deployment: "d1",
    generation: 1,
    services: { web: { image: IMAGE.ref, ...service } },
  });
  const spec = serviceContainerSpec("web", doc.services.web!, IMAGE, {
    containerId: "c1",
    hash: "h",
    deployment: "d1",
  });
  return shimRecords(spec);
}

function runRecords(...argv: string[]): string[] {
  const line = parseCommandLine(["run", ...argv], FLEETLET_GLOBALS, FLEETLET_COMMANDS);
  return shimRecords(runSpec(parseRun(line.args)).spec);
}

describe("init", () => {
  it("is off by default in a service, and reaches the shim when a service asks for it", () => {
    expect(
      desiredState.parse({
        apiVersion: "fleetlet/v1",
        deployment: "d",
        generation: 1,
        services: { web: { image: "x" } },
      }).services.web!.init,
    ).toBe(false);
    expect(serviceRecords({})).not.toContain("init=1");
    expect(serviceRecords({ init: false })).not.toContain("init=1");
    expect(serviceRecords({ init: true })).toContain("init=1");
  });

  it("is off by default for fleetlet run, and reaches the shim with --init", () => {
    expect(runRecords("--rootfs", "/r", "--", "sleep", "1")).not.toContain("init=1");
    expect(runRecords("--init", "--rootfs", "/r", "--", "sleep", "1")).toContain("init=1");
  });

  it("refuses a service's init that is not a boolean, naming the field", () => {
    const r = desiredState.safeParse({
      apiVersion: "fleetlet/v1",
      deployment: "d",
      generation: 1,
      services: { web: { image: "x", init: "yes" } },
    });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.path).toEqual(["services", "web", "init"]);
  });
});
