import { describe, it, expect } from "vitest";
import { Type } from "@sinclair/typebox";
import { parseYamlStrict, validateValue } from "./yaml-validate.js";
import { isEdgeTrustError } from "./errors.js";

const Schema = Type.Object(
  {
    name: Type.String({ pattern: "^[a-z]+$" }),
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 8443 }),
    nested: Type.Object({ mode: Type.Union([Type.Literal("enforce"), Type.Literal("audit")]) }, { additionalProperties: false }),
  },
  { additionalProperties: false },
);

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    if (isEdgeTrustError(e)) return e.message.split("\n");
    throw e;
  }
  throw new Error("expected a failure");
}

describe("parseYamlStrict", () => {
  it("accepts a valid document and applies defaults", () => {
    const { value } = parseYamlStrict("name: abc\nnested:\n  mode: audit\n", Schema, "p.yaml");
    expect(value).toEqual({ name: "abc", port: 8443, nested: { mode: "audit" } });
  });

  it("locates unknown keys, wrong types and bad patterns at file:line:col, all at once", () => {
    const text = ["name: ABC", "port: eighty", "nested:", "  mode: audit", "  extra: 1"].join("\n");
    expect(problemsOf(() => parseYamlStrict(text, Schema, "p.yaml"))).toEqual([
      'p.yaml:1:7: /name: does not match pattern ^[a-z]+$ (got "ABC")',
      'p.yaml:2:7: /port: must be integer (got "eighty")',
      'p.yaml:5:3: /nested/extra: unknown key "extra"',
    ]);
  });

  it("reports YAML syntax errors with a position", () => {
    const lines = problemsOf(() => parseYamlStrict("name: [abc\n", Schema, "p.yaml"));
    expect(lines[0]).toMatch(/^p\.yaml:\d+:\d+: /);
  });

  it("rejects duplicate keys", () => {
    const lines = problemsOf(() => parseYamlStrict("name: a\nname: b\nnested: {mode: audit}\n", Schema, "p.yaml"));
    expect(lines.join()).toMatch(/p\.yaml:2:1: .*unique/i);
  });
});

describe("validateValue", () => {
  it("names the failing field", () => {
    expect(problemsOf(() => validateValue({ name: "a", nested: { mode: "x" } }, Schema, "body"))).toEqual([
      'body/nested/mode: must be one of ["enforce","audit"]',
    ]);
  });
});
