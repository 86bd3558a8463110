import type { TSchema, Static } from "@sinclair/typebox";
import { createRequire } from "node:module";
import type { Ajv, ErrorObject, Options, ValidateFunction } from "ajv";
import { isMap, isSeq, isScalar, LineCounter, parseDocument, type Document, type Node as YamlNode } from "yaml";
import { EdgeTrustError, type ErrorCode } from "./errors.js";

/**
 * The schema compiler, loaded at the first schema without a validator compiled at build time: a daemon whose schemas
 * all have one (scripts/compiled-validators.mjs) never loads ajv, and its bundle leaves it out (~150 KB of source).
 */
function newAjv(): Ajv {
  const require = createRequire(import.meta.url);
  const { Ajv: AjvClass } = require("ajv") as { Ajv: new (o: Options) => Ajv };
  // ajv-formats ships CJS with a default export; normalise the interop shape.
  const formats = require("ajv-formats") as { default?: (a: Ajv) => Ajv } & ((a: Ajv) => Ajv);
  return (formats.default ?? formats)(new AjvClass(VALIDATOR_OPTIONS));
}

/** A problem found in a file, located for an editor: `file:line:col: message`. */
export interface Located {
  file: string;
  line: number;
  col: number;
  path: string;
  message: string;
  value?: unknown;
}

export function formatLocated(p: Located): string {
  const v = p.value === undefined ? "" : ` (got ${JSON.stringify(p.value)})`;
  return `${p.file}:${p.line}:${p.col}: ${p.path || "/"}: ${p.message}${v}`;
}

/** The options every validator here is compiled with (scripts/compiled-validators.mjs compiles with the same). */
export const VALIDATOR_OPTIONS = { allErrors: true, strict: false, useDefaults: true, coerceTypes: false, verbose: true } as const;

let ajv: Ajv | undefined;
const cache = new WeakMap<TSchema, ValidateFunction>();

/**
 * A validator compiled at build time for `schema` (ajv standalone code, VALIDATOR_OPTIONS): used instead of compiling
 * the schema at run time, so a daemon that registers its schemas' validators never builds an ajv instance (issue 14).
 */
export function registerCompiledValidator(schema: TSchema, validate: (data: unknown) => boolean): void {
  cache.set(schema, validate as ValidateFunction);
}

function compiled(schema: TSchema): ValidateFunction {
  let v = cache.get(schema);
  if (!v) {
    ajv ??= newAjv();
    v = ajv.compile(schema);
    cache.set(schema, v);
  }
  return v;
}

function nodeAt(doc: Document, segments: string[]): YamlNode | undefined {
  let node: unknown = doc.contents;
  let last: YamlNode | undefined = doc.contents ?? undefined;
  for (const seg of segments) {
    if (isMap(node)) {
      const pair = node.items.find((it) => isScalar(it.key) && String(it.key.value) === seg);
      if (!pair) break;
      node = pair.value;
      if (node) last = node as YamlNode;
    } else if (isSeq(node)) {
      const item = node.items[Number(seg)];
      if (item === undefined) break;
      node = item;
      last = item as YamlNode;
    } else break;
  }
  return last;
}

function keyNodeAt(doc: Document, segments: string[], key: string): YamlNode | undefined {
  const parent = nodeAt(doc, segments);
  if (isMap(parent)) {
    const pair = parent.items.find((it) => isScalar(it.key) && String(it.key.value) === key);
    if (pair && isScalar(pair.key)) return pair.key as YamlNode;
  }
  return parent;
}

/** A union of literals (TypeBox's enum shape) fails as one anyOf: report it as "one of", not once per branch. */
function literalChoices(e: ErrorObject): unknown[] | undefined {
  if (e.keyword !== "anyOf" || !Array.isArray(e.schema)) return undefined;
  const branches = e.schema as Array<Record<string, unknown>>;
  return branches.every((b) => "const" in b) ? branches.map((b) => b.const) : undefined;
}

/** Drop the per-branch errors of literal unions; keep everything else. */
function simplify(errors: ErrorObject[]): ErrorObject[] {
  const unions = errors.filter((e) => literalChoices(e) !== undefined).map((e) => e.schemaPath + "/");
  return errors.filter((e) => !unions.some((u) => e.schemaPath.startsWith(u)));
}

function describe(e: ErrorObject): { message: string; extraKey?: string } {
  const choices = literalChoices(e);
  if (choices) return { message: `must be one of ${JSON.stringify(choices)}` };
  switch (e.keyword) {
    case "additionalProperties": {
      const k = String((e.params as { additionalProperty: string }).additionalProperty);
      return { message: `unknown key "${k}"`, extraKey: k };
    }
    case "required":
      return { message: `missing required key "${(e.params as { missingProperty: string }).missingProperty}"` };
    case "enum":
      return { message: `must be one of ${JSON.stringify((e.params as { allowedValues: unknown[] }).allowedValues)}` };
    case "pattern":
      return { message: `does not match pattern ${(e.params as { pattern: string }).pattern}` };
    default:
      return { message: e.message ?? e.keyword };
  }
}

interface ParsedYaml<T> {
  value: T;
  doc: Document;
  lineCounter: LineCounter;
}

/**
 * Parse YAML text and validate it against a TypeBox schema; every problem (syntax or schema) comes back located.
 * Defaults from the schema are applied. Throws an EdgeTrustError whose details.problems lists every problem.
 */
export function parseYamlStrict<S extends TSchema>(
  text: string,
  schema: S,
  file: string,
  code: ErrorCode = "INVALID_INPUT",
): ParsedYaml<Static<S>> {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const problems: Located[] = [];
  for (const err of doc.errors) {
    const pos = lineCounter.linePos(err.pos[0]);
    problems.push({ file, line: pos.line, col: pos.col, path: "", message: err.message.split("\n")[0] ?? err.message });
  }
  if (problems.length === 0) {
    const value: unknown = doc.toJS({ maxAliasCount: 50 }) ?? {};
    const validate = compiled(schema);
    if (!validate(value)) {
      for (const e of simplify(validate.errors ?? [])) {
        const segs = e.instancePath.split("/").slice(1).map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
        const d = describe(e);
        const node = d.extraKey ? keyNodeAt(doc, segs, d.extraKey) : nodeAt(doc, segs);
        const pos = node?.range ? lineCounter.linePos(node.range[0]) : { line: 1, col: 1 };
        const path = d.extraKey ? `${e.instancePath}/${d.extraKey}` : e.instancePath;
        problems.push({ file, line: pos.line, col: pos.col, path, message: d.message, value: d.extraKey ? undefined : e.data });
      }
    }
    if (problems.length === 0) return { value: value as Static<S>, doc, lineCounter };
  }
  problems.sort((a, b) => a.line - b.line || a.col - b.col);
  throw new EdgeTrustError(code, problems.map(formatLocated).join("\n"), { details: { problems } });
}

/** Validate an already-parsed value (JSON bodies, env-built config). Messages use JSON pointers. */
export function validateValue<S extends TSchema>(value: unknown, schema: S, what: string, code: ErrorCode = "INVALID_INPUT"): Static<S> {
  const validate = compiled(schema);
  if (validate(value)) return value as Static<S>;
  const problems = simplify(validate.errors ?? []).map((e) => {
    const d = describe(e);
    return `${what}${e.instancePath || ""}: ${d.message}`;
  });
  throw new EdgeTrustError(code, problems.join("; "), { details: { problems } });
}
