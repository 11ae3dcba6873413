import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { ACL_HELP } from "../../agent/cli/acl-command.js";
import { main } from "../../agent/cli/fleetctl.js";
import { FleetError } from "../../agent/errors.js";
import { parseInventory, renderAcl } from "../../agent/fleet/acl.js";
import type { Inventory } from "../../schemas/inventory.js";

/** The lines that grant or deny (comments and blank lines dropped). */
const rules = (acl: string) => acl.split("\n").filter((l) => l !== "" && !l.startsWith("#"));

const DEVICE_PATTERNS = [
  "pattern read fleet/devices/%u/desired",
  "pattern write fleet/devices/%u/reported",
  "pattern write fleet/devices/%u/status",
  "pattern write fleet/devices/%u/events",
];
const operatorBlock = (op: string, p = "fleet") => [
  `user ${op}`,
  `topic deny ${p}/devices/${op}/#`,
  `topic read ${p}/#`,
  `topic write ${p}/devices/+/desired`,
  `topic write ${p}/groups/+/desired`,
  `topic write ${p}/groups/+/rollout`,
  `topic write ${p}/operators/#`,
];

describe("renderAcl", () => {
  it.each<[string, Inventory, string | undefined, string[]]>([
    [
      "one device in one group, one operator",
      { devices: { "dev-a": ["pilot"] }, operators: ["operator"] },
      undefined,
      [...DEVICE_PATTERNS, "user dev-a", "topic read fleet/groups/pilot/desired", ...operatorBlock("operator")],
    ],
    [
      "no user block for a device without groups (the patterns cover it)",
      { devices: { "dev-a": [] }, operators: ["operator"] },
      undefined,
      [...DEVICE_PATTERNS, ...operatorBlock("operator")],
    ],
    [
      "devices, groups and operators sorted; a group listed twice read once",
      {
        devices: { "dev-b": ["other"], "dev-a": ["pilot", "eu", "pilot"] },
        operators: ["ops-ci", "operator", "ops-ci"],
      },
      undefined,
      [
        ...DEVICE_PATTERNS,
        "user dev-a",
        "topic read fleet/groups/eu/desired",
        "topic read fleet/groups/pilot/desired",
        "user dev-b",
        "topic read fleet/groups/other/desired",
        ...operatorBlock("operator"),
        ...operatorBlock("ops-ci"),
      ],
    ],
    [
      "a prefix of several levels",
      { devices: { "dev-a": ["pilot"] }, operators: ["operator"] },
      "acme/fleet",
      [
        ...DEVICE_PATTERNS.map((l) => l.replace(" fleet/", " acme/fleet/")),
        "user dev-a",
        "topic read acme/fleet/groups/pilot/desired",
        ...operatorBlock("operator", "acme/fleet"),
      ],
    ],
    [
      "no devices at all",
      { devices: {}, operators: ["operator"] },
      undefined,
      [...DEVICE_PATTERNS, ...operatorBlock("operator")],
    ],
  ])("%s", (_name, inventory, prefix, expected) => {
    expect(rules(renderAcl(inventory, prefix))).toEqual(expected);
  });

  it("keeps mosquitto's pattern lines ahead of every user block, so no reader takes them for one user's", () => {
    const lines = renderAcl({ devices: { "dev-a": ["pilot"] }, operators: ["operator"] }).split("\n");
    const lastPattern = lines.findLastIndex((l) => l.startsWith("pattern "));
    const firstUser = lines.findIndex((l) => l.startsWith("user "));
    expect(lastPattern).toBeLessThan(firstUser);
  });

  it("never uses the client id (%c), which the client chooses itself", () => {
    expect(renderAcl({ devices: { "dev-a": ["pilot"] }, operators: ["operator"] })).not.toContain("%c");
  });

  it("gives the same text for the same inventory in any order", () => {
    const a = renderAcl({ devices: { x: ["g2", "g1"], y: ["g1"] }, operators: ["o2", "o1"] });
    const b = renderAcl({ devices: { y: ["g1"], x: ["g1", "g2"] }, operators: ["o1", "o2"] });
    expect(a).toBe(b);
  });

  it.each([
    ["a pattern substitution", "fleet/%u", "'%'"],
    ["a new line that would add an ACL line", "fleet\ntopic readwrite #", "control characters"],
    ["a wildcard", "fleet/#", "no wildcards"],
    ["an empty level", "acme//fleet", "no empty levels"],
    ["nothing", "", "no wildcards"],
  ])("refuses a prefix with %s", (_what, prefix, reason) => {
    const err = (() => {
      try {
        renderAcl({ devices: {}, operators: ["operator"] }, prefix);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(FleetError);
    expect(err).toMatchObject({ code: "E_INVALID_ARGUMENT", message: expect.stringContaining(reason) });
  });
});

describe("inventory validation", () => {
  const RULE = "expected 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit";
  it.each<[string, unknown, string]>([
    [
      "a device id with a topic separator",
      { devices: { "dev/a": [] }, operators: ["operator"] },
      `inventory: devices.dev/a: not a valid device id: ${RULE}`,
    ],
    [
      "a device id that is a wildcard",
      { devices: { "+": [] }, operators: ["operator"] },
      `inventory: devices.+: not a valid device id: ${RULE}`,
    ],
    [
      "a device id with a pattern substitution",
      { devices: { "%u": [] }, operators: ["operator"] },
      `inventory: devices.%u: not a valid device id: ${RULE}`,
    ],
    [
      "a device id starting with a dot",
      { devices: { ".hidden": [] }, operators: ["operator"] },
      `inventory: devices..hidden: not a valid device id: ${RULE}`,
    ],
    [
      "a device id of 129 characters",
      { devices: { ["d".repeat(129)]: [] }, operators: ["operator"] },
      `inventory: devices.${"d".repeat(129)}: not a valid device id: ${RULE}`,
    ],
    [
      "a group with a wildcard",
      { devices: { "dev-a": ["pilot", "#"] }, operators: ["operator"] },
      `inventory: devices.dev-a.1: ${RULE}`,
    ],
    [
      "a group with a space",
      { devices: { "dev-a": ["pi lot"] }, operators: ["operator"] },
      `inventory: devices.dev-a.0: ${RULE}`,
    ],
    [
      "groups that are not a list",
      { devices: { "dev-a": "pilot" }, operators: ["operator"] },
      "inventory: devices.dev-a: Invalid input: expected array, received string",
    ],
    ["an operator with a new line", { devices: {}, operators: ["op\nuser x"] }, `inventory: operators.0: ${RULE}`],
    [
      "no operator",
      { devices: {}, operators: [] },
      "inventory: operators: list at least one operator: without one nobody may publish desired state",
    ],
    [
      "an operator that is also a device",
      { devices: { "dev-a": [], ops: [] }, operators: ["operator", "ops"] },
      'inventory: operators.1: "ops" is also a device id; operators and devices need distinct names',
    ],
    [
      "a misspelt key",
      { devices: {}, operators: ["operator"], operater: ["x"] },
      'inventory: Unrecognized key: "operater"',
    ],
    [
      "devices as a list",
      { devices: ["dev-a"], operators: ["operator"] },
      "inventory: devices: Invalid input: expected record, received array",
    ],
    [
      "no devices",
      { operators: ["operator"] },
      "inventory: devices: Invalid input: expected record, received undefined",
    ],
    ["not an object", [], "inventory: Invalid input: expected object, received array"],
  ])("refuses %s, naming the field", (_what, raw, message) => {
    const err = (() => {
      try {
        parseInventory(raw);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(FleetError);
    expect(err).toMatchObject({ code: "E_INVALID_ARGUMENT", message });
  });

  it("lists every problem at once", () => {
    expect(() => parseInventory({ devices: { "bad/id": ["ok"], "dev-a": ["bad group"] }, operators: [] })).toThrow(
      `inventory: devices.bad/id: not a valid device id: ${RULE}; devices.dev-a.0: ${RULE}; operators: list at least one operator: without one nobody may publish desired state`,
    );
  });

  it("renderAcl validates too, whatever the caller's types said", () => {
    expect(() => renderAcl({ devices: { "dev/a": [] }, operators: ["operator"] })).toThrow(
      /devices\.dev\/a: not a valid device id/,
    );
  });

  it("accepts deploy/mosquitto/inventory.example.json", () => {
    const file = fileURLToPath(new URL("../../deploy/mosquitto/inventory.example.json", import.meta.url));
    const inv = parseInventory(JSON.parse(readFileSync(file, "utf8")));
    expect(inv.operators).toContain("operator");
    expect(rules(renderAcl(inv))).toContain("topic read fleet/groups/pilot/desired");
  });
});

describe("fleetctl acl", () => {
  const dir = mkdtempSync(join(tmpdir(), "fleetlet-acl-cli-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(() => vi.restoreAllMocks());

  function run(argv: string[]) {
    const out: string[] = [];
    const err: string[] = [];
    vi.spyOn(process.stdout, "write").mockImplementation((chunk) => out.push(String(chunk)) > 0);
    vi.spyOn(process.stderr, "write").mockImplementation((chunk) => err.push(String(chunk)) > 0);
    return main(["acl", ...argv]).then((status) => {
      vi.restoreAllMocks();
      return { status, stdout: out.join(""), stderr: err.join("") };
    });
  }
  const write = (name: string, text: string) => {
    const file = join(dir, name);
    writeFileSync(file, text);
    return file;
  };
  const inventory: Inventory = { devices: { "dev-a": ["pilot"] }, operators: ["operator"] };

  it("prints the ACL of an inventory file", async () => {
    const file = write("ok.json", JSON.stringify(inventory));
    expect(await run([file])).toEqual({ status: 0, stdout: renderAcl(inventory), stderr: "" });
  });

  it("takes --prefix", async () => {
    const file = write("ok.json", JSON.stringify(inventory));
    expect(await run(["--prefix", "acme/fleet", file])).toEqual({
      status: 0,
      stdout: renderAcl(inventory, "acme/fleet"),
      stderr: "",
    });
  });

  it("prints its help", async () => {
    expect(await run(["--help"])).toEqual({ status: 0, stdout: ACL_HELP, stderr: "" });
    expect(ACL_HELP.trimEnd().split("\n").length).toBeLessThanOrEqual(3);
  });

  it.each<[string, (file: (n: string, t: string) => string) => string[], number, RegExp]>([
    [
      "no file",
      () => [],
      2,
      /^fleetctl: acl: expected one INVENTORY.json, e.g. fleetctl acl inventory.json > \/etc\/mosquitto\/fleetlet\/acl \[E_INVALID_ARGUMENT\]\n$/,
    ],
    ["two files", (w) => [w("a.json", "{}"), w("b.json", "{}")], 2, /acl: expected one INVENTORY.json/],
    [
      "an unknown option",
      () => ["--prefx", "x", "inv.json"],
      2,
      /^fleetctl: unknown option --prefx \[E_INVALID_ARGUMENT\]\n$/,
    ],
    [
      "a missing file",
      () => [join(dir, "missing.json")],
      1,
      /^fleetctl: inventory .*missing\.json: cannot read it \(ENOENT\) \[E_INVALID_ARGUMENT\]\n$/,
    ],
    [
      "a file that is not JSON",
      (w) => [w("bad.json", "{devices:")],
      1,
      /^fleetctl: inventory .*bad\.json: not valid JSON \(.+\) \[E_INVALID_ARGUMENT\]\n$/,
    ],
    [
      "an invalid inventory",
      (w) => [w("invalid.json", '{"devices":{"dev-a":["#"]},"operators":["operator"]}')],
      1,
      /^fleetctl: inventory .*invalid\.json: devices\.dev-a\.0: expected 1 to 128 letters.* \[E_INVALID_ARGUMENT\]\n$/,
    ],
    [
      "a prefix with a wildcard",
      (w) => ["--prefix", "fleet/+", w("ok2.json", JSON.stringify(inventory))],
      1,
      /^fleetctl: topic prefix "fleet\/\+": expected topic levels .* \[E_INVALID_ARGUMENT\]\n$/,
    ],
  ])("refuses %s on stderr, with nothing on stdout", async (_what, args, status, stderr) => {
    const result = await run(args(write));
    expect(result.status).toBe(status);
    expect(result.stdout).toBe("");
    expect(result.stderr).toMatch(stderr);
  });
});
