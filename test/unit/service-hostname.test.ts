/**
 * A service's host name, from its document to its container spec: a service
 * name may hold '_', which a host name may not.
 */
import { describe, expect, it } from "vitest";
import { serviceContainerSpec } from "../../agent/reconcile/service-container.js";
import { containerSpec } from "../../schemas/container.js";
import { desiredState } from "../../schemas/desired.js";
import { formatIssues } from "../../schemas/format-issues.js";

const IMAGE = {
  ref: "registry.local:5000/acme/db:1",
  layers: ["/l/abc"],
  entrypoint: [],
  cmd: ["sleep", "9"],
  env: [],
};
const NETWORK = {
  name: "backend",
  spec: { subnet: "auto", ipv6: false as const, internal: false },
  subnet: "10.89.0.0/24",
  bridge: "fl-0123456789ab",
};

function doc(services: Record<string, Record<string, unknown>>) {
  return desiredState.safeParse({ apiVersion: "fleetlet/v1", deployment: "d", generation: 1, services });
}

describe("a service's host name", () => {
  it("is its name with '-' for '_', and its peers know it by its name (checked to fail before: no container)", () => {
    const parsed = doc({ my_db: { image: IMAGE.ref, networks: [] } });
    expect(parsed.success).toBe(true);
    const input = serviceContainerSpec("my_db", parsed.data!.services.my_db!, IMAGE, {
      containerId: "c1",
      hash: "h",
      deployment: "d",
      networks: [NETWORK],
    });
    const spec = containerSpec.safeParse(input);
    expect(spec.success ? "" : formatIssues(spec.error)).toBe("");
    expect(spec.data).toMatchObject({ hostname: "my-db", aliases: ["my_db"] });
  });

  it("given in the document, is refused there, naming the field, when it is no host name", () => {
    const parsed = doc({ web: { image: IMAGE.ref, hostname: "web\n10.0.0.1 db" } });
    expect(parsed.success ? "" : formatIssues(parsed.error)).toContain("services.web.hostname: expected a host name");
  });
});
