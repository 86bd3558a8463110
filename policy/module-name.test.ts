import { describe, expect, it, beforeAll } from "vitest";
import { addSignature, MANIFEST_TYP, ModuleNamePattern, nameGlobMatch, parsePolicy, verifyManifest, type GeneralJws, type JwsSigner, type TrustRoot } from "./index.js";
import { FIXTURE_NOW, fixturePolicy, makeManifest, makeSigners, makeTrustRoot } from "./fixtures.js";

/**
 * Attack run finding: a manifest signed by the threshold named a module `sensor-../../../tmp/x`; the policy glob
 * `sensor-*` matched it and the manifest verified. One module-name grammar (the identity daemon's) now holds in the
 * manifest and the policy, and a glob's `*` never crosses `/` or `..`.
 */

let signers: JwsSigner[];
let root: TrustRoot;

beforeAll(async () => {
  signers = await makeSigners();
  root = (await makeTrustRoot(signers)).root;
});

/** Sign raw payload bytes as a signer with a threshold would, skipping the signing tool's own schema check. */
async function signRaw(payload: unknown, by: JwsSigner[]): Promise<GeneralJws> {
  let jws = await addSignature({ payload: new TextEncoder().encode(JSON.stringify(payload)) }, by[0] as JwsSigner, MANIFEST_TYP);
  for (const s of by.slice(1)) jws = await addSignature({ jws }, s, MANIFEST_TYP);
  return jws;
}

const SENSOR_POLICY = `version: 1
mode: enforce
trust:
  trustRoot: trust-root.json
images:
  registries: ["127.0.0.1:5000"]
modules:
  allow: ["sensor-*", "sensor"]
  defaults:
    network: [host, none]
    users: ["*:*", "*"]
    binds:
      - source: /var/lib/edgetrust/data/{module}
        target: /data
        readOnly: false
`;

describe("module names: one grammar", () => {
  it("a traversal-named module in a threshold-signed manifest is refused at verify (schema)", async () => {
    const policy = parsePolicy(SENSOR_POLICY, "policy.yaml");
    for (const evil of ["sensor-../../../tmp/x", "sensor-a/b", "sensor-..", "Sensor-A", "sensor.x", "-sensor", "sensor-" + "a".repeat(63)]) {
      const m = makeManifest({}, 1) as unknown as { modules: Record<string, unknown> };
      m.modules = { [evil]: m.modules.sensor };
      const v = await verifyManifest(JSON.stringify(await signRaw(m, signers.slice(0, 2))), { policy, trustRoot: root, deviceId: "dev-1", now: FIXTURE_NOW });
      expect(v.ok, evil).toBe(false);
      expect(v.manifest, evil).toBeUndefined();
      expect(v.reasons.map((r) => r.check), evil).toContain("schema");
      // The signatures were good: the refusal is the name, not a lack of signers.
      expect(v.signers.length, evil).toBe(2);
    }
    // The same manifest with a name in the grammar verifies.
    const good = makeManifest({}, 1);
    const mod = good.modules.sensor;
    good.modules = { "sensor-left_2": { ...mod!, options: { ...mod!.options, binds: ["/var/lib/edgetrust/data/sensor-left_2:/data:rw"] } } };
    const v = await verifyManifest(JSON.stringify(await signRaw(good, signers.slice(0, 2))), { policy, trustRoot: root, deviceId: "dev-1", now: FIXTURE_NOW });
    expect(v.reasons).toEqual([]);
    expect(v.ok).toBe(true);
  });

  it("`*` in a name glob never matches `/` or `..`", () => {
    expect(nameGlobMatch("sensor-*", "sensor-left")).toBe(true);
    expect(nameGlobMatch("sensor-*", "sensor-../../../tmp/x")).toBe(false);
    expect(nameGlobMatch("sensor-*", "sensor-a/b")).toBe(false);
    expect(nameGlobMatch("sensor-*", "sensor-..")).toBe(false);
    expect(nameGlobMatch("*", "../x")).toBe(false);
    expect(nameGlobMatch("*", "a/b")).toBe(false);
    // Device targets keep their dotted names; a single dot is not a traversal.
    expect(nameGlobMatch("gw-*", "gw-1.site")).toBe(true);
  });

  it("the policy refuses module globs and per-module keys outside the grammar", () => {
    const bad: Array<[string, string]> = [
      ["allow", SENSOR_POLICY.replace(`allow: ["sensor-*", "sensor"]`, `allow: ["sensor/*"]`)],
      ["allow dots", SENSOR_POLICY.replace(`allow: ["sensor-*", "sensor"]`, `allow: ["sensor.*"]`)],
      ["override key", SENSOR_POLICY + `  overrides:\n    "../x":\n      network: [none]\n`],
      ["override case", SENSOR_POLICY + `  overrides:\n    Sensor:\n      network: [none]\n`],
    ];
    for (const [what, yaml] of bad) expect(() => parsePolicy(yaml, "policy.yaml"), what).toThrow(/policy/);
    expect(() => fixturePolicy()).not.toThrow();
  });

  it("the grammar is the identity daemon's (management socket) pattern", () => {
    const re = new RegExp(ModuleNamePattern);
    for (const ok of ["sensor", "a", "mod_1-x", "a".repeat(63)]) expect(re.test(ok), ok).toBe(true);
    for (const no of ["", "a".repeat(64), "Sensor", "a.b", "a/b", "..", "_a", "-a"]) expect(re.test(no), no).toBe(false);
  });
});
