import { Ajv } from "ajv";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { VALIDATOR_OPTIONS } from "../common/index.js";
import { attestedModulesFileValidator, identityStateValidator, storedModuleValidator } from "./state-validator.js";
import { AttestedModulesFileSchema, IdentityStateSchema, StoredModuleSchema } from "./state-schema.js";

type Validate = ((d: unknown) => boolean) & { errors?: unknown };

const module = { name: "m1", containerId: "c".repeat(64), imageRepository: "r", imageDigest: `sha256:${"a".repeat(64)}`, manifestVersion: 1, deploymentId: "d", uid: 1000, gid: 1000, registeredAt: "2026-01-01T00:00:00Z" };

describe("the identity daemon's state validators compiled at build time (scripts/compiled-validators.mjs; staleness: cli/config-validator.test.ts)", () => {
  it.each([
    ["identity state", IdentityStateSchema, identityStateValidator, [{ version: 1, generation: 0, deviceId: "" }, { version: 2 }, "x"]],
    ["attested-modules.json", AttestedModulesFileSchema, attestedModulesFileValidator, [{ modules: [] }, { modules: {} }, {}, "x"]],
    ["a stored registration", StoredModuleSchema, storedModuleValidator, [module, { ...module, name: "Bad Name" }, { ...module, extra: 1 }, { ...module, uid: "0" }, {}]],
  ] as const)("%s: the same verdict and errors as compiling the schema at run time", (_what, schema, validator, docs) => {
    const now = new Ajv(VALIDATOR_OPTIONS).compile(schema) as Validate;
    const built = validator as unknown as Validate;
    for (const doc of docs) {
      expect(built(structuredClone(doc))).toBe(now(structuredClone(doc)));
      expect(JSON.stringify(built.errors)).toBe(JSON.stringify(now.errors));
    }
  });

  it("a daemon restarted with modules registered reads attested-modules.json without loading ajv (issue 14: its memory)", () => {
    const dir = mkdtempSync(join(tmpdir(), "et-attested-"));
    try {
      const file = join(dir, "attested-modules.json");
      writeFileSync(file, JSON.stringify({ modules: [module] }));
      const script = `import { createRequire } from "node:module"; const { AttestedModules } = await import(${JSON.stringify(pathToFileURL(join(import.meta.dirname, "attested-modules.ts")).href)});
const names = new AttestedModules(${JSON.stringify(file)}).list().map((m) => m.name);
const ajv = Object.keys(createRequire(import.meta.url).cache).filter((f) => f.includes("/node_modules/ajv/") && !f.includes("/ajv/dist/runtime/"));
process.stdout.write(JSON.stringify({ names, ajv }));`;
      const out = JSON.parse(execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8" })) as { names: string[]; ajv: string[] };
      expect(out.names).toEqual(["m1"]);
      expect(out.ajv).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
