import { KeyObject, createPublicKey, generateKeyPairSync } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";
import type { HashAlgorithm, KeyAlgorithm } from "../hsm/index.js";

/** A subject public key in any form callers have: x509 PublicKey, DER SPKI, PEM, or a WebCrypto public CryptoKey. */
export type PublicKeyInput = x509.PublicKey | ArrayBuffer | Uint8Array | string | CryptoKey;

function isCryptoKey(v: unknown): v is CryptoKey {
  return typeof v === "object" && v !== null && "type" in v && "algorithm" in v && "usages" in v && "extractable" in v;
}

export async function toPublicKey(input: PublicKeyInput, crypto: Crypto = globalThis.crypto): Promise<x509.PublicKey> {
  if (input instanceof x509.PublicKey) return input;
  if (typeof input === "string") return new x509.PublicKey(x509.PemConverter.decodeFirst(input));
  if (isCryptoKey(input)) {
    if (input.type !== "public") throw new EdgeTrustError("INVALID_INPUT", "the subject key must be a public key");
    return new x509.PublicKey(await crypto.subtle.exportKey("spki", input));
  }
  return new x509.PublicKey(input instanceof ArrayBuffer ? input : new Uint8Array(input));
}

/**
 * The KeyAlgorithm of a DER SubjectPublicKeyInfo, or a PKI_PROFILE_VIOLATION naming what it is (RSA-1024, brainpool,
 * RSA-PSS-only keys, Ed25519 … are all refused: only EC P-256/P-384 and RSA 2048/3072 are supported).
 */
export function keyAlgorithmOfSpki(spki: ArrayBuffer | Uint8Array): KeyAlgorithm {
  const bytes = spki instanceof ArrayBuffer ? new Uint8Array(spki) : spki;
  // OpenSSL 3's key decoder costs ~0.4 ms per call and issuance asks twice for the same key (CSR check, then the
  // profile check in issueCertificate): remember recent answers for exact SPKI bytes (a pure function of them).
  const cacheKey = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  const known = spkiAlgorithms.get(cacheKey);
  if (known) return known;
  const alg = decodeKeyAlgorithm(bytes);
  if (spkiAlgorithms.size >= SPKI_CACHE_SIZE) spkiAlgorithms.delete(spkiAlgorithms.keys().next().value ?? "");
  spkiAlgorithms.set(cacheKey, alg);
  return alg;
}

const SPKI_CACHE_SIZE = 256;
const spkiAlgorithms = new Map<string, KeyAlgorithm>();

function decodeKeyAlgorithm(bytes: Uint8Array): KeyAlgorithm {
  return keyAlgorithmOfKey(importSpki(bytes));
}

/**
 * The DER SubjectPublicKeyInfo of an uncompressed P-256 / P-384 point is a fixed header (id-ecPublicKey, the curve's
 * OID, the BIT STRING header and the 0x04 form byte) followed by x || y. The headers are taken from keys Node itself
 * exports, not written out here.
 */
const EC_SPKI_HEADERS: { crv: "P-256" | "P-384"; header: Buffer; coordinate: number }[] = (["P-256", "P-384"] as const).map((crv) => {
  const spki = generateKeyPairSync("ec", { namedCurve: crv }).publicKey.export({ format: "der", type: "spki" });
  const coordinate = crv === "P-256" ? 32 : 48;
  return { crv, header: spki.subarray(0, spki.length - 2 * coordinate), coordinate };
});

/**
 * OpenSSL's parse of a DER SubjectPublicKeyInfo, or PKI_PROFILE_VIOLATION. An uncompressed P-256/P-384 key whose
 * SPKI is exactly the canonical header + x || y is imported from its coordinates (JWK): OpenSSL 3's DER decoder
 * costs about two ECDSA verifies, the coordinate import about one, and both refuse a point off the curve or a
 * coordinate not below the field prime. Anything else (RSA, other curves, compressed points, any other encoding of
 * the header) takes the DER decoder as before.
 */
export function importSpki(bytes: Uint8Array): KeyObject {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  try {
    for (const h of EC_SPKI_HEADERS) {
      if (b.length !== h.header.length + 2 * h.coordinate || !b.subarray(0, h.header.length).equals(h.header)) continue;
      const x = b.subarray(h.header.length, h.header.length + h.coordinate).toString("base64url");
      const y = b.subarray(h.header.length + h.coordinate).toString("base64url");
      return createPublicKey({ key: { kty: "EC", crv: h.crv, x, y }, format: "jwk" });
    }
    return createPublicKey({ key: b, format: "der", type: "spki" });
  } catch (e) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", "public key cannot be parsed", { cause: e });
  }
}

/**
 * `importSpki` for a signature check: an uncompressed P-256/P-384 key with the canonical header is imported from its
 * point (WebCrypto "raw", SEC 1 §2.3.4: OpenSSL's point decoder refuses a coordinate not below the field prime and a
 * point off the curve — on these prime-order curves that is the whole public-key validation). The JWK import
 * `importSpki` uses also multiplies the point by the group order (`EC_KEY_check_key`), a scalar multiplication per
 * key that a CSR check pays on top of its verify: this import and the verify after it cost ~100 µs CPU less here.
 * Anything else goes through `importSpki`.
 */
export async function importSpkiForVerify(bytes: Uint8Array): Promise<KeyObject> {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const h of EC_SPKI_HEADERS) {
    if (b.length !== h.header.length + 2 * h.coordinate || !b.subarray(0, h.header.length).equals(h.header)) continue;
    let key: CryptoKey;
    try {
      // The point: the form byte (0x04, the header's last byte) and x || y.
      key = await crypto.subtle.importKey("raw", b.subarray(h.header.length - 1) as Uint8Array<ArrayBuffer>, { name: "ECDSA", namedCurve: h.crv }, true, ["verify"]);
    } catch (e) {
      throw new EdgeTrustError("PKI_PROFILE_VIOLATION", "public key cannot be parsed", { cause: e });
    }
    return KeyObject.from(key);
  }
  return importSpki(bytes);
}

/**
 * Remember a key's algorithm (and its SHA-1 key identifier) for its SPKI bytes: the CSR check has both in hand and
 * issuance asks for them again right after.
 */
export function rememberKeyAlgorithm(spki: Uint8Array, alg: KeyAlgorithm, keyIdentifier?: Uint8Array): void {
  const cacheKey = Buffer.from(spki.buffer, spki.byteOffset, spki.byteLength).toString("base64");
  if (spkiAlgorithms.size >= SPKI_CACHE_SIZE) spkiAlgorithms.delete(spkiAlgorithms.keys().next().value ?? "");
  spkiAlgorithms.set(cacheKey, alg);
  if (keyIdentifier) {
    if (keyIds.size >= SPKI_CACHE_SIZE) keyIds.delete(keyIds.keys().next().value ?? "");
    keyIds.set(cacheKey, keyIdentifier);
  }
}

/** The SHA-1 key identifier remembered for these SPKI bytes, if any. */
export function knownKeyIdentifier(spki: Uint8Array): Uint8Array | undefined {
  return keyIds.get(Buffer.from(spki.buffer, spki.byteOffset, spki.byteLength).toString("base64"));
}
const keyIds = new Map<string, Uint8Array>();

/** The KeyAlgorithm of an imported public key, or a PKI_PROFILE_VIOLATION naming what it is. */
export function keyAlgorithmOfKey(key: KeyObject): KeyAlgorithm {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "ec") {
    if (d?.namedCurve === "prime256v1") return "EC-P256";
    if (d?.namedCurve === "secp384r1") return "EC-P384";
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `EC curve ${d?.namedCurve ?? "?"} is not allowed`, { hint: "use P-256 or P-384" });
  }
  if (key.asymmetricKeyType === "rsa") {
    if (d?.modulusLength === 2048) return "RSA-2048";
    if (d?.modulusLength === 3072) return "RSA-3072";
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `RSA key size ${d?.modulusLength ?? "?"} is not allowed`, { hint: "use RSA 2048 or 3072" });
  }
  throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `key type ${key.asymmetricKeyType ?? "?"} is not allowed`, {
    hint: "use EC P-256/P-384 or RSA 2048/3072",
  });
}

/** The signature algorithm an issuer key signs certificates with (its hash matches the key's strength). */
export function signingAlgorithmFor(key: CryptoKey): { name: string; hash: HashAlgorithm } {
  const alg = key.algorithm as Algorithm & { namedCurve?: string; hash?: { name: string } };
  if (alg.name === "ECDSA") return { name: "ECDSA", hash: alg.namedCurve === "P-384" ? "SHA-384" : "SHA-256" };
  const h = alg.hash?.name;
  return { name: alg.name, hash: h === "SHA-384" || h === "SHA-512" ? h : "SHA-256" };
}
