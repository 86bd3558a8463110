import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import * as jose from "jose";
import { EdgeTrustError } from "../common/index.js";
import type { KeyAlgorithm, KeyStore, SignatureScheme } from "../hsm/index.js";

/** The claims of attestation evidence (an EAT-style JWT, RFC 9711 claim names where they exist). */
interface EvidenceClaims {
  eat_nonce: string;
  iat: number;
  /** The device's identity URI. */
  sub: string;
  eat_profile: typeof EVIDENCE_PROFILE;
  measurements: Measurements;
}

export interface Measurements {
  /** `sha256:<hex>` of the agent/runtime build. */
  agent: string;
  policy: string;
  trustRoot: string;
  manifest: { digest: string; version: number };
  /** Attested modules: name → image digest and manifest version (from the registry the agent fills). */
  modules: Record<string, { imageDigest: string; manifestVersion: number }>;
}

const EVIDENCE_PROFILE = "tag:edgetrust.dev,2026:evidence/v1";
const EVIDENCE_TYP = "eat+jwt";

export function sha256File(path: string): string {
  if (!existsSync(path)) return "sha256:absent";
  return `sha256:${createHash("sha256").update(readFileSync(path)).digest("hex")}`;
}

/** JWS alg and KeyStore signature scheme for a key: ES256/ES384 (P1363 r||s is exactly JWS's form), RS256. */
function jwsAlgFor(alg: KeyAlgorithm): { alg: string; scheme: SignatureScheme } {
  switch (alg) {
    case "EC-P256":
      return { alg: "ES256", scheme: { name: "ECDSA", hash: "SHA-256" } };
    case "EC-P384":
      return { alg: "ES384", scheme: { name: "ECDSA", hash: "SHA-384" } };
    default:
      return { alg: "RS256", scheme: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } };
  }
}

/**
 * A compact JWS signed by a KeyStore key (never extractable): jose cannot sign with a token key, so the signing input
 * `b64url(header).b64url(payload)` is built with jose's base64url and signed by the store. Verification is jose's.
 */
export async function signJwsWithKeyStore(store: KeyStore, label: string, header: Record<string, unknown>, payload: Record<string, unknown>): Promise<string> {
  const info = await store.getKey({ label });
  const { alg, scheme } = jwsAlgFor(info.algorithm);
  const h = jose.base64url.encode(JSON.stringify({ ...header, alg }));
  const p = jose.base64url.encode(JSON.stringify(payload));
  const input = `${h}.${p}`;
  const sig = await store.sign({ label }, scheme, Buffer.from(input, "ascii"));
  return `${input}.${jose.base64url.encode(sig)}`;
}

/** Evidence for a verifier's nonce, signed by the device identity key; `x5c` carries the device certificate chain. */
export async function signEvidence(opts: {
  store: KeyStore;
  keyLabel: string;
  deviceUri: string;
  /** Device certificate then its issuers, PEM. */
  chainPem: string[];
  nonce: string;
  measurements: Measurements;
  now?: Date;
}): Promise<string> {
  if (!/^[A-Za-z0-9_-]{16,128}$/.test(opts.nonce)) throw new EdgeTrustError("INVALID_INPUT", "the nonce must be 16..128 base64url characters");
  const x5c = opts.chainPem.map((p) => p.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, ""));
  const claims: EvidenceClaims = {
    eat_nonce: opts.nonce,
    iat: Math.floor((opts.now ?? new Date()).getTime() / 1000),
    sub: opts.deviceUri,
    eat_profile: EVIDENCE_PROFILE,
    measurements: opts.measurements,
  };
  return signJwsWithKeyStore(opts.store, opts.keyLabel, { typ: EVIDENCE_TYP, x5c }, { ...claims });
}
