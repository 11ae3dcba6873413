/**
 * The repository stands alone: no file points outside it, and
 * docs/contract.md describes the config and the desired-state document as
 * the schemas define them, defaults included (the schemas are the one place
 * for a default; the docs are tested against them).
 */
import { spawnSync } from "node:child_process";
import { lstatSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { deviceConfig } from "../../schemas/config.js";
import { desiredState } from "../../schemas/desired.js";
import {
  defaultProblem,
  normalisePath,
  referenceProblems,
  referenceTable,
  schemaFields,
} from "../support/doc-reference.js";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const contract = readFileSync(join(REPO, "docs/contract.md"), "utf8");
const readme = readFileSync(join(REPO, "README.md"), "utf8");
const CONFIG_TABLE = "Config reference";
const DESIRED_TABLE = "Desired-state reference";

const listed = spawnSync("git", ["ls-files", "-z"], { cwd: REPO, encoding: "utf8" });
const inGitCheckout = listed.status === 0;

describe("the repository", () => {
  // Spelled in pieces, so that this file does not name them itself.
  const OUTSIDE = [["..", "shared"].join("/"), ["DESIGN", "md"].join(".")];

  it.skipIf(!inGitCheckout)(
    "refers to no file outside it: no tracked file names the design notes kept beside it",
    () => {
      const files = listed.stdout
        .split("\0")
        .filter((f) => f && !f.startsWith("node_modules/") && f !== "node_modules");
      const hits: string[] = [];
      for (const file of files) {
        const path = join(REPO, file);
        let text: string;
        try {
          if (!lstatSync(path).isFile()) continue; // a symlink or a submodule holds no text of ours
          text = readFileSync(path, "latin1");
        } catch (err) {
          // Deleted in the work tree but not yet from the index: nothing there to refer anywhere.
          if ((err as NodeJS.ErrnoException).code === "ENOENT") continue;
          throw err;
        }
        text.split("\n").forEach((line, i) => {
          for (const name of OUTSIDE) if (line.includes(name)) hits.push(`${file}:${i + 1}: ${name}`);
        });
      }
      expect(hits, "point these at docs/contract.md instead").toEqual([]);
    },
  );
});

describe("docs/contract.md", () => {
  it("lists every field of the device config (schemas/config.ts), with the schema's defaults", () => {
    expect(referenceProblems(deviceConfig, contract, CONFIG_TABLE)).toEqual([]);
  });

  it("lists every field of the desired-state document (schemas/desired.ts), with the schema's defaults", () => {
    expect(referenceProblems(desiredState, contract, DESIRED_TABLE)).toEqual([]);
  });

  it("notices a field the config reference leaves out, one it adds, and a default that drifted", () => {
    const broken = contract
      .split("\n")
      .filter((line) => !line.startsWith("| `pull.concurrency` |"))
      .join("\n")
      .replace("| `mqtt.prefix` | `fleet` |", "| `mqtt.prefix` | `fleets` |")
      .replace("| `api.token` | — |", "| `api.token` | — |\n| `api.tokens` | — | a field the schema lacks |")
      .replace("| `groups` | `[]` |", "| `groups` | — |");
    const problems = referenceProblems(deviceConfig, broken, CONFIG_TABLE);
    expect(problems).toEqual([
      expect.stringMatching(/^groups: the doc gives no default, but the schema's is \[\] \(line \d+\)$/),
      expect.stringMatching(
        /^mqtt\.prefix: the doc says the default is "fleets", but the schema's is "fleet" \(line \d+\)$/,
      ),
      `pull.concurrency: not in the "${CONFIG_TABLE}" table`,
      expect.stringMatching(/^api\.tokens: in the "Config reference" table \(line \d+\), but not in the schema$/),
    ]);
  });

  it('notices "the defaults of its fields" on an object whose default says otherwise', () => {
    const api = schemaFields(deviceConfig).get("api")!;
    const drifted = { ...api, default: { has: true as const, value: { listen: "0.0.0.0:7780" } } };
    expect(defaultProblem("api", drifted, "the defaults of its fields")).toMatch(
      /^api: the doc says "the defaults of its fields" \(.*127\.0\.0\.1:7780.*\), but the schema's default is/,
    );
  });
});

describe("README.md", () => {
  it("gives the schema's default wherever its configuration table names one", () => {
    const fields = schemaFields(deviceConfig);
    const problems = [...referenceTable(readme, "Configuration")].flatMap(([path, row]) => {
      const field = fields.get(normalisePath(path));
      const problem = field && defaultProblem(path, field, row.cell);
      return problem ? [`${problem} (README.md line ${row.line})`] : [];
    });
    expect(problems).toEqual([]);
  });
});
