import { createHash } from "node:crypto";
import * as jose from "jose";
import { EdgeTrustError } from "../common/index.js";
import type { TrustKey } from "./schema.js";

/**
 * JWS plumbing shared by manifests and the trust root. Verification is jose's (`flattenedVerify`, one call per
 * signature, `algorithms` pinned to the one algorithm of the trusted key); this file only adds the strict checks
 * around it: the JSON shape, a closed protected header (alg, kid, typ — no crit, no jwk/jku/x5u, no unprotected
 * header, no duplicate names) and size caps.
 */
export const ACCEPTED_ALGS = ["ES256", "ES384", "EdDSA"] as const;
export type JwsAlg = (typeof ACCEPTED_ALGS)[number];

export const MANIFEST_TYP = "edgetrust-manifest+jws";
export const TRUST_ROOT_TYP = "edgetrust-trust-root+jws";

export interface JwsSignatureEntry {
  protected: string;
  signature: string;
}

/** JWS General JSON Serialization as we produce and accept it. */
export interface GeneralJws {
  payload: string;
  signatures: JwsSignatureEntry[];
}

interface ProtectedHeader {
  alg: string;
  kid: string;
  typ: string;
}

const B64URL = /^[A-Za-z0-9_-]*$/;
const B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * One encoding per byte string (RFC 4648 §3.5): no padding, no length of 1 mod 4, and the unused low bits of the last
 * character zero (else one signature has many spellings). `s` must already match B64URL. O(1): this runs on every
 * payload, and re-encoding a 40 KB payload to compare was most of the envelope's cost.
 */
function canonicalB64(s: string): boolean {
  const rem = s.length % 4;
  if (rem === 0) return true;
  if (rem === 1) return false;
  const last = B64URL_ALPHABET.indexOf(s.charAt(s.length - 1));
  if (last < 0) return false;
  return (last & (rem === 2 ? 0x0f : 0x03)) === 0;
}

/** Decode canonical base64url (anything else throws): Node's decoder, after the strict checks it does not make. */
export function decodeB64url(s: string): Uint8Array {
  if (!B64URL.test(s) || !canonicalB64(s)) throw new TypeError("not canonical base64url");
  return Buffer.from(s, "base64url");
}

/** Parse the General JSON envelope strictly (shape only; nothing is trusted yet). Returns a reason on failure. */
export function parseGeneralJws(text: string, maxSignatures: number): GeneralJws | string {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return `not JSON: ${(e as Error).message}`;
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return "not a JWS General JSON object";
  const o = v as Record<string, unknown>;
  const extra = Object.keys(o).filter((k) => k !== "payload" && k !== "signatures");
  if (extra.length > 0) return `unexpected JWS members: ${extra.slice(0, 5).join(", ")}`;
  if (typeof o.payload !== "string" || !B64URL.test(o.payload)) return "payload must be a base64url string";
  if (!Array.isArray(o.signatures) || o.signatures.length === 0) return "signatures must be a non-empty array";
  if (o.signatures.length > maxSignatures) return `${o.signatures.length} signatures, more than ${maxSignatures}`;
  const sigs: JwsSignatureEntry[] = [];
  for (const [i, s] of o.signatures.entries()) {
    if (typeof s !== "object" || s === null || Array.isArray(s)) return `signatures[${i}] is not an object`;
    const so = s as Record<string, unknown>;
    const bad = Object.keys(so).filter((k) => k !== "protected" && k !== "signature");
    if (bad.length > 0) return `signatures[${i}] has ${bad.join(", ")} (only a protected header is accepted)`;
    if (typeof so.protected !== "string" || !B64URL.test(so.protected) || typeof so.signature !== "string" || !B64URL.test(so.signature)) {
      return `signatures[${i}] must have base64url "protected" and "signature"`;
    }
    if (!canonicalB64(so.protected) || !canonicalB64(so.signature)) return `signatures[${i}] is not canonical base64url`;
    sigs.push({ protected: so.protected, signature: so.signature });
  }
  if (!canonicalB64(o.payload)) return "payload is not canonical base64url";
  return { payload: o.payload, signatures: sigs };
}

/** Header names in a JSON object text, in order, including duplicates (JSON.parse would silently keep the last). */
function flatObjectKeys(json: string): string[] | undefined {
  const re = /^\s*\{\s*(?:("(?:[^"\\]|\\.)*")\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+|true|false|null|\[[^\]]*\])\s*(?:,\s*|(?=\})))*\}\s*$/;
  if (!re.test(json)) return undefined;
  const keys: string[] = [];
  const keyRe = /("(?:[^"\\]|\\.)*")\s*:\s*(?:"(?:[^"\\]|\\.)*"|-?\d+|true|false|null|\[[^\]]*\])/g;
  for (const m of json.matchAll(keyRe)) keys.push(JSON.parse(m[1] ?? '""') as string);
  return keys;
}

/** Decode and check a protected header: exactly {alg, kid, typ} as strings, typ as expected, nothing else. */
export function checkProtectedHeader(b64: string, typ: string, maxBytes: number): ProtectedHeader | string {
  if (b64.length > Math.ceil((maxBytes * 4) / 3)) return `protected header larger than ${maxBytes} bytes`;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(decodeB64url(b64));
  } catch {
    return "protected header is not base64url UTF-8";
  }
  let keys: string[] | undefined;
  let h: Record<string, unknown>;
  try {
    keys = flatObjectKeys(text);
    h = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return "protected header is not valid JSON";
  }
  if (!keys || typeof h !== "object" || h === null || Array.isArray(h)) return "protected header is not a flat JSON object";
  const seen = new Set<string>();
  for (const k of keys) {
    if (seen.has(k)) return `duplicate header parameter "${k}"`;
    seen.add(k);
  }
  if (seen.has("crit")) return 'critical header parameters ("crit") are not accepted';
  const unknown = keys.filter((k) => k !== "alg" && k !== "kid" && k !== "typ");
  if (unknown.length > 0) return `header parameters not accepted: ${unknown.slice(0, 5).join(", ")}`;
  if (typeof h.alg !== "string" || typeof h.kid !== "string" || typeof h.typ !== "string") return "header must have string alg, kid and typ";
  if (h.typ !== typ) return `typ ${JSON.stringify(h.typ)} is not ${typ}`;
  return { alg: h.alg, kid: h.kid, typ: h.typ };
}

const ED25519_P = 2n ** 255n - 19n;
/** y of the 8 points of small order on edwards25519 (the sign of x does not matter): 0, 1, p-1, and the order-8 pair. */
const ED25519_SMALL_ORDER_Y = new Set<bigint>([
  0n,
  1n,
  ED25519_P - 1n,
  leInt(Buffer.from("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", "hex")),
  leInt(Buffer.from("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", "hex")),
]);

function leInt(b: Uint8Array): bigint {
  let n = 0n;
  for (let i = b.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(b[i] ?? 0);
  return n;
}

/**
 * Why an Ed25519 public key must not be trusted, or undefined. OpenSSL (hence Node's WebCrypto) verifies Ed25519
 * without rejecting small-order public keys: under the identity or the order-2 point, R = A and S = 0 "verifies"
 * for every message. Such keys, and non-canonical encodings (y >= p), are refused wherever a key is used.
 */
export function ed25519KeyProblem(x: string): string | undefined {
  let b: Uint8Array;
  try {
    b = decodeB64url(x);
  } catch {
    return "x is not canonical base64url";
  }
  if (b.length !== 32) return `x is ${b.length} bytes, not 32`;
  const y = leInt(b) & ((1n << 255n) - 1n);
  if (y >= ED25519_P) return "x is a non-canonical point encoding";
  if (ED25519_SMALL_ORDER_Y.has(y)) return "x is a point of small order (it would verify forged signatures)";
  return undefined;
}

const keyCache = new WeakMap<TrustKey, Promise<CryptoKey>>();

/** The CryptoKey jose verifies with, imported once per trusted key (Ed25519 small-order keys refused). */
function verificationKey(key: TrustKey): Promise<CryptoKey> {
  let k = keyCache.get(key);
  if (!k) {
    const problem = key.kty === "OKP" ? ed25519KeyProblem(key.x) : undefined;
    if (problem) return Promise.reject(new EdgeTrustError("TRUST_ROOT_INVALID", `key ${key.kid}: ${problem}`));
    const jwk: jose.JWK = { kty: key.kty, crv: key.crv, x: key.x };
    if (key.y !== undefined) jwk.y = key.y;
    k = jose.importJWK(jwk, key.alg) as Promise<CryptoKey>;
    keyCache.set(key, k);
  }
  return k;
}

/**
 * The one signature check the verifier uses: jose `flattenedVerify` with the algorithm pinned to the key's own.
 * `alg: none`, HS256 (keyed with anything), RS*, or any alg other than the key's is refused by jose before any math.
 */
export async function verifyJwsSignature(entry: JwsSignatureEntry, payload: string, key: TrustKey): Promise<void> {
  const k = await verificationKey(key);
  await jose.flattenedVerify({ protected: entry.protected, payload, signature: entry.signature }, k, { algorithms: [key.alg], crit: {} });
}

/** WebCrypto parameters jose passes to `crypto.subtle.verify` for each accepted alg (jose lib/jws_algorithms.js). */
const SUBTLE_VERIFY_PARAMS: Record<JwsAlg, EcdsaParams | Algorithm> = {
  ES256: { name: "ECDSA", hash: "SHA-256" } as EcdsaParams,
  ES384: { name: "ECDSA", hash: "SHA-384" } as EcdsaParams,
  EdDSA: { name: "Ed25519" },
};

/**
 * The primitive under `verifyJwsSignature` for raw (non-JWS) inputs: the same `crypto.subtle.verify` call, with the
 * same parameters and the same jose-imported key. Used by the Wycheproof raw-signature tests.
 */
export async function rawVerify(alg: JwsAlg, key: TrustKey, signature: Uint8Array, data: Uint8Array): Promise<boolean> {
  try {
    const k = await verificationKey(key);
    return await crypto.subtle.verify(SUBTLE_VERIFY_PARAMS[alg], k, new Uint8Array(signature), new Uint8Array(data));
  } catch {
    return false;
  }
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

export function decodePayload(payload: string, maxBytes: number): Uint8Array {
  if (payload.length > Math.ceil((maxBytes * 4) / 3) + 4) throw new EdgeTrustError("MANIFEST_TOO_LARGE", `payload larger than ${maxBytes} bytes`);
  let bytes: Uint8Array;
  try {
    bytes = decodeB64url(payload);
  } catch {
    throw new EdgeTrustError("MANIFEST_INVALID", "payload is not canonical base64url");
  }
  if (bytes.length > maxBytes) throw new EdgeTrustError("MANIFEST_TOO_LARGE", `payload is ${bytes.length} bytes, more than ${maxBytes}`);
  return bytes;
}

interface ThresholdResult {
  /** Distinct trusted keys with a valid signature. */
  signers: string[];
  /** Signs of tampering: a bad header, a bad signature by a trusted key, a key signing twice. Any one rejects. */
  errors: string[];
  /** A signature by a key this trust root does not list (e.g. a retired signer): it counts for nothing. */
  warnings: string[];
}

/**
 * Count the distinct trusted keys that validly signed. A key counts once however many signatures it made. A signature
 * by an unknown kid counts for nothing (warning); a bad header, a wrong alg, a bad signature by a trusted key or a key
 * signing twice is an error: our signer never produces those, so they mean tampering.
 */
export async function countSigners(jws: GeneralJws, keys: readonly TrustKey[], typ: string, maxHeaderBytes: number): Promise<ThresholdResult> {
  const byKid = new Map(keys.map((k) => [k.kid, k]));
  const signers = new Set<string>();
  const errors: string[] = [];
  const warnings: string[] = [];
  for (const [i, s] of jws.signatures.entries()) {
    const h = checkProtectedHeader(s.protected, typ, maxHeaderBytes);
    if (typeof h === "string") {
      errors.push(`signature ${i}: ${h}`);
      continue;
    }
    const key = byKid.get(h.kid);
    if (!key) {
      warnings.push(`signature ${i}: kid ${JSON.stringify(h.kid.slice(0, 80))} is not a trusted key (not counted)`);
      continue;
    }
    if (h.alg !== key.alg) {
      errors.push(`signature ${i}: alg ${JSON.stringify(h.alg.slice(0, 20))} does not match key ${key.kid} (${key.alg})`);
      continue;
    }
    try {
      await verifyJwsSignature(s, jws.payload, key);
    } catch (e) {
      errors.push(`signature ${i}: key ${key.kid}: ${(e as Error).message}`);
      continue;
    }
    if (signers.has(key.kid)) errors.push(`signature ${i}: key ${key.kid} signed more than once (counted once)`);
    signers.add(key.kid);
  }
  return { signers: [...signers], errors, warnings };
}
