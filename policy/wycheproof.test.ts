import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import * as jose from "jose";
import { rawVerify, verifyJwsSignature, type JwsAlg, type TrustKey } from "./index.js";
import { checkProtectedHeader, MANIFEST_TYP } from "./jws.js";

/**
 * Wycheproof vectors for the algorithms the manifest verifier accepts. Raw-signature files go through `rawVerify`:
 * the same `crypto.subtle.verify` call, parameters and jose-imported key that jose's flattenedVerify makes inside
 * `verifyJwsSignature`. JWS vectors go through `verifyJwsSignature` itself. Every `invalid` vector must be rejected,
 * every `valid` one accepted.
 */
const DIR = resolve(process.cwd(), "../shared/vectors/wycheproof");

interface RawGroup {
  publicKeyJwk?: { kty: string; crv: string; x: string; y?: string };
  publicKey: { pk?: string; wx?: string; wy?: string };
  tests: { tcId: number; msg: string; sig: string; result: "valid" | "invalid" | "acceptable"; comment: string }[];
}

function trustKey(alg: JwsAlg, g: RawGroup): TrustKey {
  if (alg === "EdDSA") {
    const x = g.publicKeyJwk?.x ?? Buffer.from(g.publicKey.pk ?? "", "hex").toString("base64url");
    return { kid: "w", alg, kty: "OKP", crv: "Ed25519", x };
  }
  // Coordinates from wx/wy (hex, possibly with a sign byte), fixed to the curve's size: every group has them.
  const size = alg === "ES256" ? 32 : 48;
  const coord = (h: string) => Buffer.from(BigInt("0x" + h).toString(16).padStart(size * 2, "0"), "hex").toString("base64url");
  return { kid: "w", alg, kty: "EC", crv: alg === "ES256" ? "P-256" : "P-384", x: coord(g.publicKey.wx ?? ""), y: coord(g.publicKey.wy ?? "") };
}

for (const [file, alg] of [
  ["ecdsa_secp256r1_sha256_p1363_test.json", "ES256"],
  ["ecdsa_secp384r1_sha384_p1363_test.json", "ES384"],
  ["ed25519_test.json", "EdDSA"],
] as const) {
  describe(`Wycheproof ${file} (${alg})`, () => {
    it("rejects every invalid vector and accepts every valid one", async () => {
      const data = JSON.parse(readFileSync(resolve(DIR, file), "utf8")) as { testGroups: RawGroup[] };
      let valid = 0;
      let invalid = 0;
      const wrong: string[] = [];
      for (const g of data.testGroups) {
        const key = trustKey(alg, g);
        for (const t of g.tests) {
          if (t.result === "acceptable") continue;
          const ok = await rawVerify(alg, key, Buffer.from(t.sig, "hex"), Buffer.from(t.msg, "hex"));
          if (ok !== (t.result === "valid")) wrong.push(`tc ${t.tcId} (${t.comment}): expected ${t.result}`);
          if (t.result === "valid") valid++;
          else invalid++;
        }
      }
      expect(wrong).toEqual([]);
      expect(valid).toBeGreaterThan(50);
      expect(invalid).toBeGreaterThan(50);
    });
  });
}

interface JwsGroup {
  comment?: string;
  public?: Record<string, unknown>;
  private?: Record<string, unknown>;
  tests: { tcId: number | string; comment: string; jws: string | Record<string, unknown>; result: "valid" | "invalid" }[];
}

describe("Wycheproof json_web_signature_test.json", () => {
  const data = JSON.parse(readFileSync(resolve(DIR, "json_web_signature_test.json"), "utf8")) as { testGroups: JwsGroup[] };

  /** Split a compact JWS the way our verifier sees signatures: {protected, payload, signature}. */
  function entry(jws: string): { protected: string; payload: string; signature: string } | undefined {
    const parts = jws.split(".");
    if (parts.length !== 3) return undefined;
    return { protected: parts[0] ?? "", payload: parts[1] ?? "", signature: parts[2] ?? "" };
  }

  it("ES256 groups (P-256 keys): every invalid rejected, every valid accepted by verifyJwsSignature", async () => {
    let n = 0;
    const wrong: string[] = [];
    for (const g of data.testGroups) {
      const pub = g.public;
      if (!pub || pub.kty !== "EC" || pub.crv !== "P-256") continue;
      // A key marked for encryption (use: enc / key_ops: encrypt) is not a signer key: it never enters a trust root.
      const signingKey = pub.use === "sig" || (pub.use === undefined && pub.key_ops === undefined);
      const key: TrustKey = { kid: String(pub.kid), alg: "ES256", kty: "EC", crv: "P-256", x: String(pub.x), y: String(pub.y) };
      for (const t of g.tests) {
        n++;
        let ok = false;
        const e = typeof t.jws === "string" ? entry(t.jws) : undefined;
        if (e && signingKey) {
          try {
            await verifyJwsSignature(e, e.payload, key);
            ok = true;
          } catch {
            ok = false;
          }
        }
        if (ok !== (t.result === "valid")) wrong.push(`tc ${t.tcId} (${t.comment}): expected ${t.result}`);
      }
    }
    expect(wrong).toEqual([]);
    expect(n).toBeGreaterThan(30);
  });

  it("every vector for an algorithm we do not accept (HS*, RS*, PS*, ES512) is rejected, valid or not", async () => {
    // Our trust keys are ES256/ES384/EdDSA only; these vectors are presented to the ES256 verifier as an attacker would.
    const { publicKey } = await jose.generateKeyPair("ES256", { extractable: true });
    const jwk = await jose.exportJWK(publicKey);
    const key: TrustKey = { kid: "k", alg: "ES256", kty: "EC", crv: "P-256", x: String(jwk.x), y: String(jwk.y) };
    let n = 0;
    for (const g of data.testGroups) {
      const alg = (g.public?.alg ?? g.private?.alg) as string | undefined;
      if (alg === "ES256" || alg === undefined) continue;
      for (const t of g.tests) {
        if (typeof t.jws !== "string") continue;
        const e = entry(t.jws);
        if (!e) continue;
        n++;
        await expect(verifyJwsSignature(e, e.payload, key), `tc ${t.tcId}`).rejects.toThrow();
        // and our header check refuses them before jose is even asked (no typ, or a foreign alg later)
        expect(typeof checkProtectedHeader(e.protected, MANIFEST_TYP, 1024)).toBe("string");
      }
    }
    expect(n).toBeGreaterThan(100);
  });
});
