import { EdgeTrustError } from "../common/index.js";
import type { HashAlgorithm, KeyAlgorithm, KeyRef, KeyStore, SignatureScheme } from "./types.js";

/**
 * A WebCrypto `Crypto` whose `subtle.sign` also accepts keys that live in a KeyStore (PKCS#11 token or the software
 * store), so libraries written against WebCrypto — @peculiar/x509's certificate, CSR and CRL generators — sign with
 * non-extractable keys. Everything that is not about a KeyStore key goes to Node's own `globalThis.crypto`.
 *
 * A KeyStore key is a plain object shaped like a CryptoKey (`type: "private"`, `extractable: false`, `algorithm`,
 * `usages: ["sign"]`); x509 only duck-types these fields. The shim recognises its own keys through a WeakMap, so a
 * forged look-alike object never reaches a store.
 *
 * ECDSA: stores return IEEE P1363 (r || s), which is exactly what WebCrypto returns; x509 converts it to the DER
 * `ECDSA-Sig-Value` because the key's `algorithm` carries `name: "ECDSA"` and the `namedCurve`.
 */

interface Binding {
  store: KeyStore;
  ref: KeyRef;
  algorithm: KeyAlgorithm;
}

const bindings = new WeakMap<object, Binding>();

interface KeyStoreCryptoKeyOptions {
  /** Hash used for RSA keys (part of an RSA CryptoKey's algorithm); ECDSA takes its hash from the sign call. */
  rsaHash?: HashAlgorithm;
}

/** A CryptoKey-shaped handle to a KeyStore private key; usable only with the `Crypto` from `keyStoreCrypto()`. */
export async function keyStoreCryptoKey(store: KeyStore, ref: KeyRef, opts: KeyStoreCryptoKeyOptions = {}): Promise<CryptoKey> {
  const info = await store.getKey(ref);
  const algorithm = cryptoKeyAlgorithm(info.algorithm, opts.rsaHash ?? "SHA-256");
  const key: CryptoKey = Object.freeze({
    type: "private" as const,
    extractable: false,
    algorithm,
    usages: ["sign" as const],
  });
  bindings.set(key, { store, ref: { label: info.label, id: info.id }, algorithm: info.algorithm });
  return key;
}

/** The public half as a real (extractable) Node CryptoKey, for x509's `publicKey` fields or verification. */
export async function keyStorePublicCryptoKey(store: KeyStore, ref: KeyRef, opts: KeyStoreCryptoKeyOptions = {}): Promise<CryptoKey> {
  const pub = await store.getPublicKey(ref);
  const alg = cryptoKeyAlgorithm(pub.algorithm, opts.rsaHash ?? "SHA-256");
  const importAlg: EcKeyImportParams | RsaHashedImportParams =
    alg.name === "ECDSA"
      ? { name: "ECDSA", namedCurve: (alg as EcKeyAlgorithm).namedCurve }
      : { name: alg.name, hash: (alg as RsaHashedKeyAlgorithm).hash };
  return globalThis.crypto.subtle.importKey("spki", new Uint8Array(pub.spki), importAlg, true, ["verify"]);
}

/** Both halves, in the shape x509's `createSelfSigned` and `Pkcs10CertificateRequestGenerator` take. */
export async function keyStoreKeyPair(store: KeyStore, ref: KeyRef, opts: KeyStoreCryptoKeyOptions = {}): Promise<CryptoKeyPair> {
  return { privateKey: await keyStoreCryptoKey(store, ref, opts), publicKey: await keyStorePublicCryptoKey(store, ref, opts) };
}

/**
 * The KeyStore and key behind a handle from `keyStoreCryptoKey`, for code that signs bytes itself (pki's issuance core
 * signs each TBSCertificate through the store — for PKCS#11, its session pool — without the WebCrypto round trip).
 * `undefined` for any other key, a look-alike object included.
 */
export function keyStoreKeyOf(key: CryptoKey): { store: KeyStore; ref: KeyRef; algorithm: KeyAlgorithm } | undefined {
  const b = bindings.get(key);
  return b && { store: b.store, ref: b.ref, algorithm: b.algorithm };
}

/** True when `key` came from `keyStoreCryptoKey`. */
export function isKeyStoreCryptoKey(key: unknown): key is CryptoKey {
  return typeof key === "object" && key !== null && bindings.has(key);
}

function cryptoKeyAlgorithm(alg: KeyAlgorithm, rsaHash: HashAlgorithm): EcKeyAlgorithm | RsaHashedKeyAlgorithm {
  switch (alg) {
    case "EC-P256":
      return { name: "ECDSA", namedCurve: "P-256" };
    case "EC-P384":
      return { name: "ECDSA", namedCurve: "P-384" };
    case "RSA-2048":
    case "RSA-3072":
      return {
        name: "RSASSA-PKCS1-v1_5",
        modulusLength: alg === "RSA-2048" ? 2048 : 3072,
        publicExponent: new Uint8Array([1, 0, 1]),
        hash: { name: rsaHash },
      };
  }
}

function hashName(h: unknown): HashAlgorithm {
  const name = typeof h === "string" ? h : typeof h === "object" && h !== null && "name" in h ? (h as { name: unknown }).name : undefined;
  const norm = typeof name === "string" ? name.toUpperCase() : "";
  if (norm === "SHA-256" || norm === "SHA-384" || norm === "SHA-512") return norm;
  throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `hash ${String(name)} is not supported for KeyStore signing`);
}

function toScheme(params: AlgorithmIdentifier | RsaPssParams | EcdsaParams, key: CryptoKey, binding: Binding): SignatureScheme {
  const p: Record<string, unknown> = typeof params === "string" ? { name: params } : { ...params };
  const name = typeof p.name === "string" ? p.name.toUpperCase() : "";
  const keyHash = "hash" in key.algorithm ? (key.algorithm as RsaHashedKeyAlgorithm).hash : undefined;
  if (name === "ECDSA") {
    if (!binding.algorithm.startsWith("EC-")) throw mismatch(name, binding);
    return { name: "ECDSA", hash: hashName(p.hash) };
  }
  if (binding.algorithm.startsWith("EC-")) throw mismatch(name, binding);
  if (name === "RSASSA-PKCS1-V1_5") return { name: "RSASSA-PKCS1-v1_5", hash: hashName(p.hash ?? keyHash) };
  if (name === "RSA-PSS") {
    const saltLength = typeof p.saltLength === "number" ? p.saltLength : 32;
    return { name: "RSA-PSS", hash: hashName(p.hash ?? keyHash), saltLength };
  }
  throw mismatch(name, binding);
}

function mismatch(name: string, b: Binding): EdgeTrustError {
  return new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `cannot sign with ${name || "?"} using a ${b.algorithm} key`);
}

function toBytes(data: BufferSource): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * The `Crypto` to hand to x509 (`X509CertificateGenerator.create(params, crypto)` etc.). Node's subtle methods are
 * bound so they keep working; `sign` routes KeyStore keys to their store; `exportKey` refuses them.
 */
export function keyStoreCrypto(base: Crypto = globalThis.crypto): Crypto {
  const s = base.subtle;
  const subtle: SubtleCrypto = {
    decrypt: s.decrypt.bind(s),
    deriveBits: s.deriveBits.bind(s),
    deriveKey: s.deriveKey.bind(s),
    digest: s.digest.bind(s),
    encrypt: s.encrypt.bind(s),
    generateKey: s.generateKey.bind(s),
    importKey: s.importKey.bind(s),
    unwrapKey: s.unwrapKey.bind(s),
    verify: s.verify.bind(s),
    wrapKey: s.wrapKey.bind(s),
    exportKey: ((format: KeyFormat, key: CryptoKey) => {
      if (bindings.has(key)) {
        return Promise.reject(new DOMException("key held by a KeyStore is not extractable", "InvalidAccessError"));
      }
      return s.exportKey(format, key);
    }) as SubtleCrypto["exportKey"],
    sign: async (algorithm: AlgorithmIdentifier | RsaPssParams | EcdsaParams, key: CryptoKey, data: BufferSource): Promise<ArrayBuffer> => {
      const binding = bindings.get(key);
      if (!binding) return s.sign(algorithm, key, data);
      const sig = await binding.store.sign(binding.ref, toScheme(algorithm, key, binding), toBytes(data));
      return sig.buffer.slice(sig.byteOffset, sig.byteOffset + sig.byteLength) as ArrayBuffer;
    },
  };
  return {
    subtle,
    getRandomValues: base.getRandomValues.bind(base),
    randomUUID: base.randomUUID.bind(base),
  };
}
