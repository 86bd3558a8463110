import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { Ajv } from "ajv";
import { VALIDATOR_OPTIONS } from "../common/index.js";
import { describe, expect, it } from "vitest";
import { edgeTrustConfigValidator } from "./config-validator.js";
import { EdgeTrustConfig } from "./config-schema.js";

const ROOT = join(import.meta.dirname, "..");

type Validate = ((d: unknown) => boolean) & { errors?: unknown };

describe("validators compiled at build time (scripts/compiled-validators.mjs) for what the daemons check at start", () => {
  it("are those of the current schemas (edgetrust.yaml, the identity state): a schema changed without regenerating them fails here", () => {
    execFileSync(process.execPath, ["--import", "tsx", join(ROOT, "scripts", "compiled-validators.mjs"), "--check"], { cwd: ROOT, stdio: "pipe" });
  });

  it("edgetrust.yaml: the same verdict, errors and defaults as compiling the schema at run time with common/yaml-validate.ts's options", () => {
    const docs: unknown[] = [
      {},
      { device: { deviceId: "d1", moduleLifetimeSeconds: 600 }, hsm: { module: "/usr/lib/softhsm/libsofthsm2.so" } },
      { device: { deviceId: "d1", keyAlgorithm: "EC-P521" }, log: { level: "loud" }, hub: { nope: 1 } },
      { device: { moduleLifetimeSeconds: "600" } },
    ];
    const now = new Ajv(VALIDATOR_OPTIONS).compile(EdgeTrustConfig) as Validate;
    const built = edgeTrustConfigValidator as unknown as Validate;
    for (const doc of docs) {
      const [a, b] = [structuredClone(doc), structuredClone(doc)];
      expect(built(a)).toBe(now(b));
      expect(a).toEqual(b);
      expect(JSON.stringify(built.errors ?? null)).toBe(JSON.stringify(now.errors ?? null));
    }
  });
});
