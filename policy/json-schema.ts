import { PolicySchema } from "./schema.js";

/** The JSON Schema editors use (published as policy/policy.schema.json), generated from the TypeBox schema. */
function policyJsonSchema(): Record<string, unknown> {
  // JSON round trip drops TypeBox's symbol-keyed metadata, leaving plain JSON Schema (draft-07 keywords).
  const plain = JSON.parse(JSON.stringify(PolicySchema)) as Record<string, unknown>;
  return { $schema: "http://json-schema.org/draft-07/schema#", ...plain };
}

export function policyJsonSchemaText(): string {
  return JSON.stringify(policyJsonSchema(), null, 2) + "\n";
}
