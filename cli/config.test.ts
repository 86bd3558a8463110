import { describe, it, expect } from "vitest";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { renderDefaults, loadConfig } from "../common/index.js";
import { EdgeTrustConfig } from "./config-schema.js";

const golden = fileURLToPath(new URL("./testdata/config-defaults.golden.yaml", import.meta.url));

describe("edgetrust.yaml", () => {
  it("documented defaults match the golden file (UPDATE_GOLDEN=1 to accept a change)", () => {
    const rendered = renderDefaults(EdgeTrustConfig);
    if (process.env.UPDATE_GOLDEN === "1") writeFileSync(golden, rendered);
    expect(rendered).toBe(readFileSync(golden, "utf8"));
  });

  it("an empty configuration is valid and every section has its defaults", () => {
    const cfg = loadConfig(EdgeTrustConfig, { env: {} });
    for (const key of Object.keys(EdgeTrustConfig.properties)) expect(cfg).toHaveProperty(key);
  });
});
