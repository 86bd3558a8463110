/**
 * The policy's validators compiled at build time (schema-validators.ts, scripts/compiled-validators.mjs; registered by
 * validators.ts) must accept, refuse, report and fill in defaults exactly as compiling the schemas at run time with
 * common's options does: every manifest and policy the agent checks goes through them.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { TSchema } from "@sinclair/typebox";
import { Ajv } from "ajv";
import addFormatsModule from "ajv-formats";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { VALIDATOR_OPTIONS } from "../common/index.js";
import { ManifestSchema, PolicySchema, TrustRootBodySchema } from "./schema.js";
import { ManifestStateSchema } from "./manifest.js";
import { manifestStateValidator, manifestValidator, policyValidator, trustRootBodyValidator } from "./schema-validators.js";
import { FIXTURE_POLICY_YAML, makeManifest } from "./fixtures.js";

type Validate = ((d: unknown) => boolean) & { errors?: unknown };
const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ?? addFormatsModule) as (a: Ajv) => Ajv;
// The options common/yaml-validate.ts compiles with at run time (and scripts/compiled-validators.mjs at build time).
const runtime = addFormats(new Ajv(VALIDATOR_OPTIONS));
const policy = parse(FIXTURE_POLICY_YAML) as Record<string, unknown>;
const key = { kid: "k1", alg: "ES256", kty: "EC", crv: "P-256", x: "A".repeat(43), y: "B".repeat(43) };

const CASES: Array<[string, TSchema, Validate, unknown[]]> = [
  ["policy", PolicySchema, policyValidator as Validate, [
    policy, parse(readFileSync(join(import.meta.dirname, "examples", "policy.yaml"), "utf8")),
    { ...policy, mode: "lenient" }, { ...policy, extra: {} }, { version: 2 }, [],
  ]],
  ["manifest", ManifestSchema, manifestValidator as Validate, [
    makeManifest(), { ...makeManifest(), expiresAt: "tomorrow" }, { ...makeManifest(), issuedAt: "2026-02-30T25:00:00Z" },
    { ...makeManifest(), modules: { m: { image: "busybox:latest" } } }, { ...makeManifest(), version: -1, extra: 1 },
    { ...makeManifest(), modules: { "../x": { image: `r/x@sha256:${"c".repeat(64)}`, options: { privileged: true } } } },
  ]],
  ["trust root", TrustRootBodySchema, trustRootBodyValidator as Validate, [
    { type: "edgetrust-trust-root", version: 1, expires: "2027-01-01T00:00:00Z", threshold: 1, keys: [key] },
    { type: "edgetrust-trust-root", version: 1, expires: "2027-01-01T00:00:00Z", threshold: 1, keys: [] },
    { type: "edgetrust-trust-root", version: 0, expires: "never", threshold: 40, keys: [{ ...key, alg: "RS256", use: "enc" }] },
  ]],
  ["manifest state", ManifestStateSchema, manifestStateValidator as Validate, [
    { deviceId: "d", deploymentId: "x", version: 1, payloadDigest: "a".repeat(64), acceptedAt: "2026-01-01T00:00:00Z" },
    { deviceId: "d", version: "1", payloadDigest: "A".repeat(64) },
  ]],
];

describe("the policy's validators compiled at build time", () => {
  it.each(CASES)("%s: same verdict, errors and defaults as the run-time compilation", (_name, schema, built, values) => {
    const now = runtime.compile(schema) as Validate;
    let refused = 0;
    for (const value of values) {
      const [a, b] = [structuredClone(value), structuredClone(value)];
      const ok = built(a);
      expect(ok).toBe(now(b));
      expect(a).toEqual(b);
      expect(JSON.stringify(built.errors ?? null)).toBe(JSON.stringify(now.errors ?? null));
      if (!ok) refused++;
    }
    // Each list holds inputs that must be refused, so error reports are compared too, not only acceptance.
    expect(refused).toBeGreaterThan(0);
    expect(refused).toBeLessThan(values.length);
  });
});
