import { createPublicKey, type KeyObject } from "node:crypto";
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

/** OpenSSL's parse of a DER SubjectPublicKeyInfo, or PKI_PROFILE_VIOLATION. */
export function importSpki(bytes: Uint8Array): KeyObject {
  try {
    return createPublicKey({ key: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), format: "der", type: "spki" });
  } catch (e) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", "public key cannot be parsed", { cause: e });
  }
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
