/**
 * The management answers' validators compiled at build time (answer-validators.ts, scripts/compiled-validators.mjs;
 * registered by management-client.ts) must judge an answer exactly as compiling its schema at run time with common's
 * options does: the agent and the hub believe what the identity daemon says only through them.
 */
import type { TSchema } from "@sinclair/typebox";
import { Ajv } from "ajv";
import { describe, expect, it } from "vitest";
import { VALIDATOR_OPTIONS } from "../common/index.js";
import { EventsPageSchema, ModuleListSchema, ModuleViewSchema, SasVerifyResponse } from "./management.js";
import { eventsPageAnswer, moduleListAnswer, moduleViewAnswer, sasVerifyAnswer } from "./answer-validators.js";

type Validate = ((d: unknown) => boolean) & { errors?: unknown };
// The options common/yaml-validate.ts compiles with at run time (and scripts/compiled-validators.mjs at build time).
const runtime = new Ajv(VALIDATOR_OPTIONS);
const view = {
  name: "m1", containerId: "a".repeat(64), imageRepository: "127.0.0.1:5000/m", imageDigest: `sha256:${"b".repeat(64)}`,
  manifestVersion: 1, deploymentId: "d", registeredAt: "2026-01-01T00:00:00Z", socketPath: "/run/edgetrust/modules/m1/workload.sock",
};

const CASES: Array<[string, TSchema, Validate, unknown[]]> = [
  ["module view", ModuleViewSchema, moduleViewAnswer as Validate, [view, { ...view, manifestVersion: 1.5 }, { ...view, socketPath: undefined }, null]],
  ["module list", ModuleListSchema, moduleListAnswer as Validate, [{ modules: [view] }, { modules: [{ name: 1 }] }, {}]],
  ["events page", EventsPageSchema, eventsPageAnswer as Validate, [{ epoch: "e", events: [], next: 0, gap: false }, { epoch: "e", events: [{}], next: "1" }]],
  ["SAS verify", SasVerifyResponse, sasVerifyAnswer as Validate, [{}, []]],
];

describe("the management answers' validators compiled at build time", () => {
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
    expect(refused).toBeGreaterThan(0);
  });
});
