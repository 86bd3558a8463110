import { readFileSync } from "node:fs";
import * as jose from "jose";
import { EdgeTrustError, isEdgeTrustError } from "../common/index.js";
import type { KeyRef, KeyStore } from "../hsm/index.js";
import type { TrustKey } from "./schema.js";
import { checkProtectedHeader, parseGeneralJws, verifyJwsSignature, type GeneralJws, type JwsAlg } from "./jws.js";

/**
 * Something that can add one signature: a private key from a file (signed by jose's GeneralSign) or a key in the
 * HSM (signed by the KeyStore; the JWS signing input is built with jose's base64url helpers). Either way the new
 * signature is verified with jose against the signer's public key before it is returned.
 */
export interface JwsSigner {
  kid: string;
  alg: JwsAlg;
  /** The public key, as it goes into a trust root. */
  publicKey: TrustKey;
  /** A jose-usable private key (file keys), or... */
  joseKey?: CryptoKey | jose.KeyObject;
  /** ...an external signer: `data` is the JWS signing input, the result a raw JOSE signature (P1363 for ECDSA). */
  sign?: (data: Uint8Array) => Promise<Uint8Array>;
}

function algFor(jwk: { kty?: string; crv?: string }): JwsAlg {
  if (jwk.kty === "EC" && jwk.crv === "P-256") return "ES256";
  if (jwk.kty === "EC" && jwk.crv === "P-384") return "ES384";
  if (jwk.kty === "OKP" && jwk.crv === "Ed25519") return "EdDSA";
  throw new EdgeTrustError("MANIFEST_SIGN_FAILED", `key type ${jwk.kty ?? "?"}/${jwk.crv ?? "?"} is not accepted`, {
    hint: "use an EC P-256 (ES256), EC P-384 (ES384) or Ed25519 (EdDSA) key",
  });
}

/** A trust-root key entry for a public JWK; kid defaults to the RFC 7638 thumbprint. */
export async function trustKeyFromJwk(jwk: jose.JWK, kid?: string): Promise<TrustKey> {
  const alg = algFor(jwk);
  const id = kid ?? (await jose.calculateJwkThumbprint({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, ...(jwk.y ? { y: jwk.y } : {}) } as jose.JWK));
  const k: TrustKey = { kid: id, alg, kty: jwk.kty as TrustKey["kty"], crv: jwk.crv as TrustKey["crv"], x: jwk.x ?? "", use: "sig" };
  if (jwk.y !== undefined) k.y = jwk.y;
  return k;
}

/** A signer from a private key: PKCS#8 PEM or a private JWK (JSON), given as text. */
export async function signerFromPrivateKey(text: string, kid?: string): Promise<JwsSigner> {
  let jwk: jose.JWK;
  let key: CryptoKey | jose.KeyObject;
  const trimmed = text.trim();
  try {
    if (trimmed.startsWith("{")) {
      jwk = JSON.parse(trimmed) as jose.JWK;
      if (!jwk.d) throw new Error("the JWK has no private part (d)");
      key = (await jose.importJWK(jwk, algFor(jwk))) as CryptoKey;
      kid ??= jwk.kid;
    } else {
      // Find the curve first (importPKCS8 needs the alg), via Node's KeyObject.
      const { createPrivateKey } = await import("node:crypto");
      const ko = createPrivateKey({ key: trimmed, format: "pem" });
      jwk = ko.export({ format: "jwk" }) as jose.JWK;
      key = await jose.importPKCS8(trimmed, algFor(jwk));
    }
  } catch (e) {
    if (isEdgeTrustError(e)) throw e;
    throw new EdgeTrustError("MANIFEST_SIGN_FAILED", `cannot read private key: ${(e as Error).message}`, { cause: e, hint: "give a PKCS#8 PEM or a private JWK" });
  }
  const pub: jose.JWK = { kty: jwk.kty, crv: jwk.crv, x: jwk.x };
  if (jwk.y !== undefined) pub.y = jwk.y;
  const publicKey = await trustKeyFromJwk(pub, kid);
  return { kid: publicKey.kid, alg: publicKey.alg, publicKey, joseKey: key };
}

export async function signerFromKeyFile(path: string, kid?: string): Promise<JwsSigner> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new EdgeTrustError("MANIFEST_SIGN_FAILED", `cannot read key file ${path}: ${(e as Error).message}`, { cause: e });
  }
  return signerFromPrivateKey(text, kid);
}

/** A signer backed by a KeyStore key (HSM or software store). Only EC P-256/P-384 keys (ES256/ES384). */
export async function signerFromKeyStore(store: KeyStore, ref: KeyRef, kid?: string): Promise<JwsSigner> {
  const pub = await store.getPublicKey(ref);
  if (pub.algorithm !== "EC-P256" && pub.algorithm !== "EC-P384") {
    throw new EdgeTrustError("MANIFEST_SIGN_FAILED", `key ${ref.label ?? ref.id ?? "?"} is ${pub.algorithm}; manifests accept ES256, ES384, EdDSA only`);
  }
  // Loaded here, not at the top: a verifier (the edge agent) never signs, and hsm/ brings the PKCS#11 addon and the
  // ASN.1 stack with it.
  const { defaultScheme } = await import("../hsm/index.js");
  const scheme = defaultScheme(pub.algorithm);
  const publicKey = await trustKeyFromJwk(pub.jwk as jose.JWK, kid);
  return {
    kid: publicKey.kid,
    alg: publicKey.alg,
    publicKey,
    sign: async (data) => new Uint8Array(await store.sign(ref, scheme, data)),
  };
}

/**
 * Add one signature by `signer` to `jws` (or start a new JWS over `payload`). The payload bytes are never re-encoded:
 * every signer signs exactly the same payload. Refuses a second signature by the same kid.
 */
export async function addSignature(target: { jws: GeneralJws } | { payload: Uint8Array }, signer: JwsSigner, typ: string): Promise<GeneralJws> {
  const existing = "jws" in target ? target.jws : undefined;
  const payloadB64 = existing ? existing.payload : jose.base64url.encode("payload" in target ? target.payload : new Uint8Array());
  if (existing) {
    for (const s of existing.signatures) {
      const h = checkProtectedHeader(s.protected, typ, 4096);
      if (typeof h !== "string" && h.kid === signer.kid) {
        throw new EdgeTrustError("MANIFEST_SIGN_FAILED", `key ${signer.kid} already signed this document`, { hint: "each signer signs once; the threshold counts distinct keys" });
      }
    }
  }
  const header = { alg: signer.alg, kid: signer.kid, typ };
  let entry: { protected: string; signature: string };
  try {
    if (signer.joseKey) {
      const bytes = jose.base64url.decode(payloadB64);
      const g = await new jose.GeneralSign(bytes).addSignature(signer.joseKey).setProtectedHeader(header).sign();
      const s = g.signatures[0];
      if (g.payload !== payloadB64 || !s?.protected) throw new Error("payload encoding is not canonical base64url");
      entry = { protected: s.protected, signature: s.signature };
    } else if (signer.sign) {
      const protectedB64 = jose.base64url.encode(JSON.stringify(header));
      const input = new TextEncoder().encode(`${protectedB64}.${payloadB64}`);
      entry = { protected: protectedB64, signature: jose.base64url.encode(await signer.sign(input)) };
    } else {
      throw new Error("signer has neither a key nor a sign function");
    }
    await verifyJwsSignature(entry, payloadB64, signer.publicKey);
  } catch (e) {
    if (isEdgeTrustError(e)) throw e;
    throw new EdgeTrustError("MANIFEST_SIGN_FAILED", `signing with ${signer.kid} failed: ${(e as Error).message}`, { cause: e });
  }
  return { payload: payloadB64, signatures: [...(existing?.signatures ?? []), entry] };
}

/** Parse a JWS General JSON text for adding a signature (shape only). */
export function parseJwsForSigning(text: string): GeneralJws {
  const r = parseGeneralJws(text, 64);
  if (typeof r === "string") throw new EdgeTrustError("MANIFEST_INVALID", `not a JWS General JSON document: ${r}`);
  return r;
}
