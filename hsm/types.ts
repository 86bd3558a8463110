/** The key store contract every backend (PKCS#11 token, software files) fulfils. */
import type { MacKeyStore } from "./mac.js";


export type KeyAlgorithm = "EC-P256" | "EC-P384" | "RSA-2048" | "RSA-3072";
export const KEY_ALGORITHMS: readonly KeyAlgorithm[] = ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072"];

export type HashAlgorithm = "SHA-256" | "SHA-384" | "SHA-512";

/** How a signature is made. ECDSA signatures are returned as IEEE P1363 (r || s), the WebCrypto/JOSE form. */
export type SignatureScheme =
  | { name: "ECDSA"; hash: HashAlgorithm }
  | { name: "RSASSA-PKCS1-v1_5"; hash: HashAlgorithm }
  | { name: "RSA-PSS"; hash: HashAlgorithm; saltLength: number };

/** A key is named by its label, its id (hex), or both; a `pkcs11:` URI (RFC 7512) parses to this. */
export interface KeyRef {
  label?: string;
  /** CKA_ID as lowercase hex. */
  id?: string;
}

export interface KeyInfo {
  label: string;
  id: string;
  algorithm: KeyAlgorithm;
  /** Where the key lives: a `pkcs11:` URI (no PIN) or a software store path. */
  uri: string;
  /** Always false for keys this store generates; reported so `hsm list` and tests can show it. */
  extractable: boolean;
  sensitive: boolean;
}

export interface PublicKeyExport {
  /** DER SubjectPublicKeyInfo. */
  spki: Buffer;
  jwk: JsonWebKey;
  algorithm: KeyAlgorithm;
}

export interface KeyStore {
  readonly kind: "pkcs11" | "software";
  generateKey(label: string, algorithm: KeyAlgorithm, opts?: { id?: string }): Promise<KeyInfo>;
  getKey(ref: KeyRef): Promise<KeyInfo>;
  getPublicKey(ref: KeyRef): Promise<PublicKeyExport>;
  /** Sign `data` (the message, not a digest): the store hashes it as the scheme says. */
  sign(ref: KeyRef, scheme: SignatureScheme, data: Uint8Array): Promise<Buffer>;
  list(): Promise<KeyInfo[]>;
  delete(ref: KeyRef): Promise<void>;
  /**
   * Erase every object (private half, public half, any class) that carries both this label and this id, whole or
   * partial — what an interrupted generation or deletion leaves. Returns how many objects went; 0 if none.
   */
  eraseObjects?(ref: { label: string; id: string }): Promise<number>;
  /** Ids (hex) of public-key objects under `label` whose private half is not on the token (debris of a cut erasure). */
  orphanPublicKeys?(label: string): Promise<string[]>;
  close(): Promise<void>;
  /** HMAC-SHA256 secret keys kept in the store (hsm/mac.ts); absent on stores that have none. */
  readonly mac?: MacKeyStore;
}

/** The natural signature scheme for a key: ECDSA with the curve's hash, RSA PKCS#1 v1.5 with SHA-256. */
export function defaultScheme(alg: KeyAlgorithm): SignatureScheme {
  switch (alg) {
    case "EC-P256":
      return { name: "ECDSA", hash: "SHA-256" };
    case "EC-P384":
      return { name: "ECDSA", hash: "SHA-384" };
    default:
      return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
  }
}
