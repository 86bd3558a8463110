import { describe, expect, it } from "vitest";
import { readdirSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as jose from "jose";
import { signTrustRoot } from "./index.js";
import { rawVerify, verifyJwsSignature, type JwsAlg } from "./jws.js";
import { trustKeyFromJwk } from "./sign.js";
import type { TrustKey } from "./schema.js";
import { makeSigner } from "./fixtures.js";
import { checkProtectedHeader, MANIFEST_TYP } from "./jws.js";

/**
 * Wycheproof vectors for the algorithms the manifest verifier accepts. Raw-signature files go through `rawVerify`:
 * the same `crypto.subtle.verify` call, parameters and jose-imported key that jose's flattenedVerify makes inside
 * `verifyJwsSignature`. JWS vectors go through `verifyJwsSignature` itself. Every `invalid` vector must be rejected,
 * every `valid` one accepted, and every `acceptable` one is treated as invalid: rejected (policy/README.md#conformance).
 */
const DIR = fileURLToPath(new URL("../test/vectors/wycheproof/", import.meta.url));

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
      const data = JSON.parse(readFileSync(resolve(DIR, file), "utf8")) as { testGroups: RawGroup[]; numberOfTests: number };
      let valid = 0;
      let invalid = 0;
      const wrong: string[] = [];
      for (const g of data.testGroups) {
        const key = trustKey(alg, g);
        for (const t of g.tests) {
          const ok = await rawVerify(alg, key, Buffer.from(t.sig, "hex"), Buffer.from(t.msg, "hex"));
          // acceptable = rejected: we accept only what the vectors call valid
          if (ok !== (t.result === "valid")) wrong.push(`tc ${t.tcId} (${t.comment}): expected ${t.result === "valid" ? "accepted" : "rejected"}`);
          if (t.result === "valid") valid++;
          else invalid++;
        }
      }
      expect(wrong).toEqual([]);
      expect(valid + invalid).toBe(data.numberOfTests);
      expect(valid).toBeGreaterThan(50);
      expect(invalid).toBeGreaterThan(50);
    });
  });
}

/**
 * Strict DER ECDSA-Sig-Value -> JOSE r||s (RFC 7518 §3.4), or undefined: definite minimal lengths, exactly two
 * minimally encoded non-negative INTEGERs, nothing trailing, each fitting the curve size. Test-only: our verifier
 * never sees DER (JWS signatures are r||s), this lets the DER files' arithmetic cases reach the same primitive.
 */
function derToP1363(der: Uint8Array, size: number): Uint8Array | undefined {
  let i = 0;
  const len = (): number | undefined => {
    const b = der[i++];
    if (b === undefined) return undefined;
    if (b < 0x80) return b;
    if (b !== 0x81) return undefined; // an ECDSA P-256/P-384 signature never needs more than one length byte
    const l = der[i++];
    return l !== undefined && l >= 0x80 ? l : undefined; // minimal: 0x81 only for lengths >= 128
  };
  const int = (): Uint8Array | undefined => {
    if (der[i++] !== 0x02) return undefined;
    const l = len();
    if (l === undefined || l === 0 || i + l > der.length) return undefined;
    const v = der.subarray(i, i + l);
    i += l;
    if (((v[0] ?? 0) & 0x80) !== 0) return undefined; // negative
    if (v[0] === 0 && l > 1 && ((v[1] ?? 0) & 0x80) === 0) return undefined; // non-minimal leading zero
    const mag = v[0] === 0 && l > 1 ? v.subarray(1) : v;
    return mag.length <= size ? mag : undefined;
  };
  if (der[i++] !== 0x30) return undefined;
  const total = len();
  if (total === undefined || i + total !== der.length) return undefined;
  const r = int();
  const s = int();
  if (!r || !s || i !== der.length) return undefined;
  const out = new Uint8Array(2 * size);
  out.set(r, size - r.length);
  out.set(s, 2 * size - s.length);
  return out;
}

for (const [file, alg] of [
  ["ecdsa_secp256r1_sha256_test.json", "ES256"],
  ["ecdsa_secp384r1_sha384_test.json", "ES384"],
] as const) {
  describe(`Wycheproof ${file} (DER, ${alg})`, () => {
    it("every vector is rejected as a JWS signature (DER is not r||s); strictly decoded, every invalid one still fails", async () => {
      const data = JSON.parse(readFileSync(resolve(DIR, file), "utf8")) as { testGroups: RawGroup[]; numberOfTests: number };
      const size = alg === "ES256" ? 32 : 48;
      const wrong: string[] = [];
      let n = 0;
      let validConverted = 0;
      for (const g of data.testGroups) {
        const key = trustKey(alg, g);
        for (const t of g.tests) {
          n++;
          const der = Buffer.from(t.sig, "hex");
          const msg = Buffer.from(t.msg, "hex");
          // 1. as our verifier would see it: the bytes as the JWS signature
          if (await rawVerify(alg, key, der, msg)) wrong.push(`tc ${t.tcId} (${t.comment}): DER bytes accepted as r||s`);
          // 2. through a strict DER decoder to r||s: valid ones verify, invalid/acceptable ones fail somewhere
          const p1363 = derToP1363(der, size);
          const ok = p1363 !== undefined && (await rawVerify(alg, key, p1363, msg));
          if (ok !== (t.result === "valid")) wrong.push(`tc ${t.tcId} (${t.comment}) [${(t as { flags?: string[] }).flags?.join(",") ?? ""}]: expected ${t.result}`);
          if (t.result === "valid" && ok) validConverted++;
        }
      }
      expect(wrong).toEqual([]);
      expect(n).toBe(data.numberOfTests);
      expect(validConverted).toBeGreaterThan(150);
    });
  });
}

describe("Wycheproof acceptable cases", () => {
  it("none in the ES256/ES384/EdDSA/JWS files at the pinned commit (a vector update that adds some must be reviewed); the RSA one is rejected", async () => {
    const count: Record<string, string[]> = {};
    for (const file of readdirSync(DIR).filter((f) => f.endsWith("_test.json"))) {
      const data = JSON.parse(readFileSync(resolve(DIR, file), "utf8")) as { testGroups: { tests: { tcId: number | string; result: string; comment: string }[] }[] };
      count[file] = data.testGroups.flatMap((g) => g.tests.filter((t) => t.result === "acceptable").map((t) => `${t.tcId} ${t.comment}`));
    }
    expect(count).toEqual({
      "ecdsa_secp256r1_sha256_p1363_test.json": [],
      "ecdsa_secp256r1_sha256_test.json": [],
      "ecdsa_secp384r1_sha384_p1363_test.json": [],
      "ecdsa_secp384r1_sha384_test.json": [],
      "ed25519_test.json": [],
      "json_web_key_test.json": [],
      "json_web_signature_test.json": [],
      "rsa_pss_2048_sha256_mgf1_32_test.json": [],
      "rsa_signature_2048_sha256_test.json": ["8 Missing NULL in the ASN encoding"],
    });
    // RS256 has no path at all: an RSA key cannot enter a trust root, and an RS256 header never reaches jose.
    const rsa = JSON.parse(readFileSync(resolve(DIR, "rsa_signature_2048_sha256_test.json"), "utf8")) as { testGroups: { publicKeyJwk?: Record<string, string> }[] };
    const jwk = rsa.testGroups[0]?.publicKeyJwk ?? { kty: "RSA" };
    await expect(trustKeyFromJwk(jwk)).rejects.toThrow(/not accepted/);
  });
});

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

  it("every invalid vector of the file (all groups, counted) is rejected: by the header check and by jose with the group's key", async () => {
    const { publicKey } = await jose.generateKeyPair("ES256", { extractable: true });
    const jwk = await jose.exportJWK(publicKey);
    const stranger: TrustKey = { kid: "k", alg: "ES256", kty: "EC", crv: "P-256", x: String(jwk.x), y: String(jwk.y) };
    const total = data.testGroups.flatMap((g) => g.tests).filter((t) => t.result === "invalid").length;
    let n = 0;
    const wrong: string[] = [];
    for (const g of data.testGroups) {
      const pub = g.public;
      // The group's own key when it is one a trust root could hold (EC P-256 for ES256); else an ES256 key, as an
      // attacker presenting the vector to a device would face.
      const own = pub?.kty === "EC" && pub.crv === "P-256" ? ({ kid: String(pub.kid), alg: "ES256", kty: "EC", crv: "P-256", x: String(pub.x), y: String(pub.y) } as TrustKey) : undefined;
      for (const t of g.tests) {
        if (t.result !== "invalid") continue;
        n++;
        const e = typeof t.jws === "string" ? entry(t.jws) : undefined;
        if (!e) continue; // not even three parts: nothing to verify
        if (typeof checkProtectedHeader(e.protected, MANIFEST_TYP, 1024) !== "string") wrong.push(`tc ${t.tcId}: header accepted`);
        for (const key of own ? [own, stranger] : [stranger]) {
          const ok = await verifyJwsSignature(e, e.payload, key).then(() => true, () => false);
          // an encryption-use EC key's vector verifies mathematically; it is refused because such a key is never a signer
          const encKey = pub?.use === "enc" || (Array.isArray(pub?.key_ops) && !pub.key_ops.includes("verify"));
          if (ok && !(encKey && key === own)) wrong.push(`tc ${t.tcId} (${t.comment}): accepted by jose with ${key === own ? "the group key" : "an ES256 key"}`);
        }
      }
    }
    expect(wrong).toEqual([]);
    expect(n).toBe(total);
    expect(total).toBe(355);
    // The encryption-use EC keys cannot enter a trust root (keys are closed JWKs with at most use: sig).
    const signer = await makeSigner("ES256");
    for (const g of data.testGroups.filter((x) => x.public?.kty === "EC" && (x.public.use === "enc" || x.public.key_ops !== undefined))) {
      const k = { ...g.public, alg: "ES256", kid: "enc" };
      await expect(signTrustRoot({ type: "edgetrust-trust-root", version: 1, expires: "2030-01-01T00:00:00Z", threshold: 1, keys: [k as TrustKey] }, signer)).rejects.toThrow(/TRUST_ROOT_INVALID|use|key_ops|unknown key/);
    }
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
