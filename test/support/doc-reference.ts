/**
 * Holds a reference table in the docs to the zod schema it documents: every
 * field of the schema is listed, nothing else is, and each default the doc
 * gives is the one the schema applies. The schema stays the one place for a
 * default; the doc is tested against it.
 *
 * A reference table is a markdown table under its own heading. Its first
 * column names fields in code (`pull.concurrency`), with `<…>` for a record's
 * key (`registries.<host:port>.ca`) and `[]` for an array's element
 * (`services.<name>.volumes[].target`). Its second column is the default:
 * a value in code (`3`, `fleet`, `[]`), read as JSON where it parses as JSON
 * and as a plain string otherwise; or "the defaults of its fields" for an
 * object whose default is exactly what its fields' defaults make; or prose
 * without code ("—", "from the image") when the schema has no default.
 */
import { isDeepStrictEqual } from "node:util";
import * as z from "../../schemas/zod.js";

/** Any zod schema, seen through its definition (what zod/mini and classic zod share). */
type Schema = z.core.$ZodType;
type Def = { type: string; innerType?: Schema; shape?: Record<string, Schema>; valueType?: Schema; element?: Schema };
const defOf = (s: Schema) => s._zod.def as unknown as Def;

export interface SchemaField {
  /** Whether parsing an absent value yields one, and which. */
  default: { has: false } | { has: true; value: unknown };
  /** The object under the field's wrappers, when it is one. */
  object?: Schema;
}

export type DocDefault = { kind: "none" } | { kind: "value"; value: unknown; text: string } | { kind: "fields" };

export const FIELDS_DEFAULT = "the defaults of its fields";

/** A path with every `<…>` placeholder written `<>`, so `<name>` and `<host:port>` compare equal. */
export const normalisePath = (path: string) => path.replace(/<[^>]*>/g, "<>");

const WRAPPERS = new Set(["optional", "default", "nullable"]);

function unwrap(schema: Schema): Schema {
  let s = schema;
  while (WRAPPERS.has(defOf(s).type)) s = defOf(s).innerType!;
  return s;
}

function defaultOf(schema: Schema): SchemaField["default"] {
  const parsed = z.safeParse(schema, undefined);
  return parsed.success && parsed.data !== undefined ? { has: true, value: parsed.data } : { has: false };
}

/** Every field of `schema`, by dotted path, walking objects, records of objects and arrays of objects. */
export function schemaFields(schema: Schema): Map<string, SchemaField> {
  const fields = new Map<string, SchemaField>();
  const walk = (inner: Schema, prefix: string) => {
    const def = defOf(inner);
    if (def.type === "object") {
      for (const [key, field] of Object.entries(def.shape!)) {
        const path = prefix ? `${prefix}.${key}` : key;
        const under = unwrap(field);
        fields.set(path, {
          default: defaultOf(field),
          ...(defOf(under).type === "object" ? { object: under } : {}),
        });
        walk(under, path);
      }
    } else if (def.type === "record") {
      walk(unwrap(def.valueType!), `${prefix}.<>`);
    } else if (def.type === "array") {
      walk(unwrap(def.element!), `${prefix}[]`);
    }
  };
  walk(schema, "");
  return fields;
}

/** The table under the heading `heading` (its exact text, without the #s): field path → its default cell. */
export function referenceTable(markdown: string, heading: string): Map<string, { cell: string; line: number }> {
  const lines = markdown.split("\n");
  const start = lines.findIndex((l) => /^#+ /.test(l) && l.replace(/^#+ /, "").trim() === heading);
  if (start < 0) throw new Error(`no heading "${heading}"`);
  const rows = new Map<string, { cell: string; line: number }>();
  let tableRow = 0;
  for (let i = start + 1; i < lines.length && !/^#+ /.test(lines[i]!); i++) {
    const line = lines[i]!;
    if (!line.startsWith("|")) continue;
    if (tableRow++ < 2) continue; // the header and the |---| line
    const [fieldCell = "", defaultCell = ""] = line.split(/(?<!\\)\|/).slice(1);
    for (const [, field] of fieldCell.matchAll(/`([^`]+)`/g))
      rows.set(field!, { cell: defaultCell.trim(), line: i + 1 });
  }
  return rows;
}

/** What a default cell says. */
export function parseDefaultCell(cell: string): DocDefault {
  if (cell.startsWith(FIELDS_DEFAULT)) return { kind: "fields" };
  const code = /^`([^`]*)`/.exec(cell);
  if (!code) return { kind: "none" };
  const text = code[1]!;
  try {
    return { kind: "value", value: JSON.parse(text), text };
  } catch {
    // Not JSON, so a plain string such as fleet or 127.0.0.1:7780.
    return { kind: "value", value: text, text };
  }
}

const show = (value: unknown) => JSON.stringify(value);

/** One field's documented default against the schema's; undefined when they agree. */
export function defaultProblem(path: string, field: SchemaField, cell: string): string | undefined {
  const doc = parseDefaultCell(cell);
  const actual = field.default;
  if (doc.kind === "none")
    return actual.has ? `${path}: the doc gives no default, but the schema's is ${show(actual.value)}` : undefined;
  if (!actual.has) return `${path}: the doc gives a default ("${cell}"), but the schema has none`;
  if (doc.kind === "value")
    return isDeepStrictEqual(doc.value, actual.value)
      ? undefined
      : `${path}: the doc says the default is ${show(doc.value)}, but the schema's is ${show(actual.value)}`;
  const fromFields = field.object && z.safeParse(field.object, {});
  if (!fromFields?.success) return `${path}: the doc says "${FIELDS_DEFAULT}", but its fields make no default object`;
  return isDeepStrictEqual(fromFields.data, actual.value)
    ? undefined
    : `${path}: the doc says "${FIELDS_DEFAULT}" (${show(fromFields.data)}), but the schema's default is ${show(actual.value)}`;
}

/**
 * Everything wrong with the reference table under `heading` for `schema`:
 * fields it leaves out, fields the schema does not have, and defaults that
 * differ. Each problem names the field.
 */
export function referenceProblems(schema: Schema, markdown: string, heading: string): string[] {
  const fields = schemaFields(schema);
  const table = referenceTable(markdown, heading);
  const documented = new Map([...table].map(([path, row]) => [normalisePath(path), { path, ...row }]));
  const problems: string[] = [];
  for (const [path, field] of fields) {
    const row = documented.get(path);
    if (!row) problems.push(`${path}: not in the "${heading}" table`);
    else {
      const problem = defaultProblem(row.path, field, row.cell);
      if (problem) problems.push(`${problem} (line ${row.line})`);
    }
  }
  for (const [path, row] of documented)
    if (!fields.has(path))
      problems.push(`${row.path}: in the "${heading}" table (line ${row.line}), but not in the schema`);
  return problems;
}
