import { describe, expect, it, vi } from "vitest";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { main } from "../cli/index.js";
import { SoftwareKeyStore } from "../hsm/index.js";
import { signManifest, verifyManifest } from "./index.js";
import { signerFromKeyFile, signerFromKeyStore } from "./sign.js";
import { FIXTURE_NOW, FIXTURE_POLICY_YAML, fixturePolicy, makeManifest, makeTrustRoot, makeSigner } from "./fixtures.js";

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const o = vi.spyOn(process.stdout, "write").mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
  const e = vi.spyOn(process.stderr, "write").mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
  process.exitCode = 0;
  try {
    const code = await main(["node", "edgetrust", ...args]);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
    process.exitCode = 0;
  }
}

describe("edgetrust manifest sign|verify, policy check", () => {
  it("signs with two PEM keys, verifies, records state, then refuses the replay", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-cli-"));
    const keys = ["a", "b"].map((n) => {
      const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const f = join(dir, `${n}.pem`);
      writeFileSync(f, privateKey.export({ type: "pkcs8", format: "pem" }));
      return f;
    });
    const signers = await Promise.all(keys.map((k) => signerFromKeyFile(k)));
    const policy = { ...(fixturePolicy() as object), trust: { keys: signers.map((s) => s.publicKey), threshold: 2 } };
    writeFileSync(join(dir, "policy.yaml"), stringify(policy));
    writeFileSync(join(dir, "m.json"), JSON.stringify(makeManifest()));
    expect((await run(["manifest", "sign", "--in", join(dir, "m.json"), "--key", keys[0] ?? "", "--out", join(dir, "m1.json")])).code).toBe(0);
    expect((await run(["manifest", "sign", "--in", join(dir, "m1.json"), "--key", keys[1] ?? "", "--out", join(dir, "m2.json")])).code).toBe(0);
    expect((JSON.parse(readFileSync(join(dir, "m2.json"), "utf8")) as { signatures: unknown[] }).signatures).toHaveLength(2);
    const common = ["--policy", join(dir, "policy.yaml"), "--device", "dev-1", "--state", join(dir, "state.json"), "--now", FIXTURE_NOW.toISOString()];
    const ok = await run(["manifest", "verify", join(dir, "m2.json"), ...common, "--accept", "--json"]);
    expect(ok.code).toBe(0);
    expect((JSON.parse(ok.out) as { ok: boolean }).ok).toBe(true);
    const replay = await run(["manifest", "verify", join(dir, "m2.json"), ...common]);
    expect(replay.code).toBe(1);
    expect(replay.out).toMatch(/replay: version 5 was already accepted/);
    expect(replay.err).toMatch(/^edgetrust: manifest rejected: replay \(MANIFEST_REJECTED\)\n$/);
  });
  it("policy check: ok, and a bad file gives file:line:col and exit 1", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-cli-"));
    const ok = await run(["policy", "check", "policy/examples/policy.yaml"]);
    expect(ok.code).toBe(0);
    writeFileSync(join(dir, "p.yaml"), FIXTURE_POLICY_YAML.replace("mode: enforce", "mode: enforce\nmodez: 1"));
    const bad = await run(["policy", "check", join(dir, "p.yaml")]);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/p\.yaml:3:1: \/modez: unknown key "modez"/);
  });
  it("policy test exits 1 when a case fails", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-cli-"));
    writeFileSync(join(dir, "c.yaml"), stringify({ cases: [{ name: "wrong", image: { image: "docker.io/x:1", expect: "allow" } }] }));
    const r = await run(["policy", "test", "policy/examples/policy.yaml", join(dir, "c.yaml")]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/FAIL wrong: expected allow, got deny/);
  });
});

describe("signing with the software key store (hsm/)", () => {
  it("an EC-P256 key in SoftwareKeyStore co-signs with a file key", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-sw-"));
    const store = await SoftwareKeyStore.open({ dir, passphrase: "test-passphrase" });
    try {
      await store.generateKey("release", "EC-P256");
      const hsm = await signerFromKeyStore(store, { label: "release" });
      const other = await makeSigner("EdDSA");
      const { root } = await makeTrustRoot([hsm, other]);
      let jws = await signManifest(makeManifest(), hsm);
      jws = await signManifest(jws, other);
      const v = await verifyManifest(JSON.stringify(jws), { policy: fixturePolicy(), trustRoot: root, deviceId: "dev-1", now: FIXTURE_NOW });
      expect(v.reasons).toEqual([]);
      expect(v.signers).toContain(hsm.kid);
    } finally {
      await store.close();
    }
  });
});
