import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { attestedModuleBody, certificateBody, eventsQuery } from "./index.js";

const ROOT = join(import.meta.dirname, "..");

describe("the identity API's request validators compiled at build time (identity-api/wire-validators.ts)", () => {
  it("are those of the current schemas: a schema changed without regenerating the file fails here", () => {
    // Exit status 1 and a message naming the command when the generated file differs from what the schemas give now.
    execFileSync(process.execPath, ["--import", "tsx", join(ROOT, "scripts", "wire-validators.mjs"), "--check"], { cwd: ROOT, stdio: "pipe" });
  });

  it("validate as fastify's ajv did: first error only, extra properties removed, query strings coerced, defaults applied", () => {
    const bad = { csr: "nope" };
    expect(certificateBody(bad)).toBe(false);
    expect(certificateBody.errors).toHaveLength(1);
    expect(certificateBody.errors?.[0]).toMatchObject({ instancePath: "/csr", keyword: "minLength" });
    const extra = { csr: `-----BEGIN CERTIFICATE REQUEST-----${"A".repeat(100)}`, sneaky: 1 };
    expect(certificateBody(extra)).toBe(true);
    expect(extra).not.toHaveProperty("sneaky");
    const q: Record<string, unknown> = { after: "7" };
    expect(eventsQuery(q)).toBe(true);
    expect(q).toEqual({ after: 7, waitSeconds: 0 });
    expect(attestedModuleBody({ name: "m", containerId: "../../etc" })).toBe(false);
  });
});
