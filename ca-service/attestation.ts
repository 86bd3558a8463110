import "reflect-metadata";
import { randomBytes, createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import * as x509 from "@peculiar/x509";
import * as jose from "jose";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError, parseYamlStrict } from "../common/index.js";
import { signingAlgorithmFor } from "../pki/index.js";
import type { CertificateAuthority } from "./ca.js";
import { normalizeSerial, type CaStore } from "./store.js";
import type { AttestationConfig } from "./attestation-config.js";

export { AttestationConfig } from "./attestation-config.js";


const Digest = Type.String({ pattern: "^sha256:[0-9a-f]{64}$" });
/** Reference values the evidence is appraised against. */
export const ReferenceValues = Type.Object(
  {
    agent: Type.Optional(Type.Array(Digest)),
    policy: Type.Optional(Type.Array(Digest)),
    trustRoot: Type.Optional(Type.Array(Digest)),
    manifest: Type.Optional(Type.Object({ minVersion: Type.Integer({ minimum: 0 }), digests: Type.Optional(Type.Array(Digest)) }, { additionalProperties: false })),
    modules: Type.Optional(Type.Record(Type.String(), Type.Array(Digest))),
  },
  { additionalProperties: false },
);
export type ReferenceValues = Static<typeof ReferenceValues>;

export type EarStatus = "affirming" | "warning" | "contraindicated";
export interface ClaimAppraisal {
  status: EarStatus;
  reason?: string;
}

const Evidence = Type.Object({
  eat_nonce: Type.String(),
  iat: Type.Integer(),
  sub: Type.String(),
  eat_profile: Type.Literal("tag:edgetrust.dev,2026:evidence/v1"),
  measurements: Type.Object({
    agent: Type.String(),
    policy: Type.String(),
    trustRoot: Type.String(),
    manifest: Type.Object({ digest: Type.String(), version: Type.Integer() }),
    modules: Type.Record(Type.String(), Type.Object({ imageDigest: Type.String(), manifestVersion: Type.Integer() })),
  }),
});
type Evidence = Static<typeof Evidence>;

export const EAR_PROFILE = "tag:github.com,2023:veraison/ear";
const ALGS = ["ES256", "ES384", "RS256"];

export function loadReferenceValues(file: string): ReferenceValues {
  if (!file) return {};
  return parseYamlStrict(readFileSync(file, "utf8"), ReferenceValues, file).value as ReferenceValues;
}

function worst(a: EarStatus, b: EarStatus): EarStatus {
  const rank: Record<EarStatus, number> = { affirming: 0, warning: 1, contraindicated: 2 };
  return rank[a] >= rank[b] ? a : b;
}

/** Appraise measurements against reference values, claim by claim, with the reason for anything not affirming. */
export function appraise(m: Evidence["measurements"], ref: ReferenceValues): Record<string, ClaimAppraisal> {
  const out: Record<string, ClaimAppraisal> = {};
  const digestClaim = (name: string, value: string, allowed: string[] | undefined): void => {
    if (!allowed) out[name] = { status: "warning", reason: `no reference value for ${name}` };
    else if (allowed.includes(value)) out[name] = { status: "affirming" };
    else out[name] = { status: "contraindicated", reason: `${name} digest ${value} is not a reference value` };
  };
  digestClaim("agent", m.agent, ref.agent);
  digestClaim("policy", m.policy, ref.policy);
  digestClaim("trustRoot", m.trustRoot, ref.trustRoot);
  if (!ref.manifest) out.manifest = { status: "warning", reason: "no reference value for the manifest" };
  else if (m.manifest.version < ref.manifest.minVersion) out.manifest = { status: "contraindicated", reason: `manifest version ${m.manifest.version} is older than ${ref.manifest.minVersion} (rollback)` };
  else if (ref.manifest.digests && !ref.manifest.digests.includes(m.manifest.digest)) out.manifest = { status: "contraindicated", reason: `manifest digest ${m.manifest.digest} is not a reference value` };
  else out.manifest = { status: "affirming" };
  const refMods = ref.modules;
  for (const [name, mod] of Object.entries(m.modules)) {
    const key = `module:${name}`;
    if (!refMods) out[key] = { status: "warning", reason: "no reference values for modules" };
    else if (!refMods[name]) out[key] = { status: "contraindicated", reason: `module ${name} is not in the reference values` };
    else if (!refMods[name].includes(mod.imageDigest)) out[key] = { status: "contraindicated", reason: `module ${name} runs image ${mod.imageDigest}, not a reference digest` };
    else out[key] = { status: "affirming" };
  }
  for (const name of Object.keys(refMods ?? {})) {
    if (!(name in m.modules)) out[`module:${name}`] = { status: "warning", reason: `module ${name} is expected but not running` };
  }
  return out;
}

/**
 * The verifier: single-use, short-lived nonces; evidence verified with jose against the device certificate in its
 * x5c (which must be a device-identity certificate this CA issued, unrevoked and unexpired); an EAR result signed by
 * the current issuing CA (JWS built by hand because the CA key is in the HSM, verified with jose by anyone).
 */
export class AttestationVerifier {
  private readonly nonces = new Map<string, number>();
  private static readonly MAX_NONCES = 100_000;

  constructor(
    private readonly ca: CertificateAuthority,
    private readonly store: CaStore,
    private readonly config: AttestationConfig,
    private readonly references: () => ReferenceValues = () => loadReferenceValues(config.referenceFile),
    private readonly now: () => number = Date.now,
  ) {}

  nonce(): { nonce: string; expiresAt: string } {
    const t = this.now();
    for (const [n, exp] of this.nonces) if (exp <= t) this.nonces.delete(n);
    if (this.nonces.size >= AttestationVerifier.MAX_NONCES) throw new EdgeTrustError("RATE_LIMITED", "too many outstanding attestation nonces");
    const nonce = randomBytes(32).toString("base64url");
    const exp = t + this.config.nonceTtlSeconds * 1000;
    this.nonces.set(nonce, exp);
    return { nonce, expiresAt: new Date(exp).toISOString() };
  }

  private consume(nonce: string): void {
    const exp = this.nonces.get(nonce);
    this.nonces.delete(nonce);
    if (exp === undefined) throw new EdgeTrustError("ATTESTATION_NONCE_INVALID", "the evidence's eat_nonce is unknown or was already used", { hint: "get a fresh nonce from /v1/attestation/nonce" });
    if (exp <= this.now()) throw new EdgeTrustError("ATTESTATION_NONCE_INVALID", "the evidence's eat_nonce has expired", { hint: "get a fresh nonce and attest again promptly" });
  }

  private async deviceCertificate(header: jose.ProtectedHeaderParameters): Promise<{ cert: x509.X509Certificate; deviceId: string }> {
    const leaf = header.x5c?.[0];
    if (!leaf) throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", "the evidence header has no x5c device certificate");
    const der = Buffer.from(leaf, "base64");
    const cert = new x509.X509Certificate(new Uint8Array(der));
    const rec = await this.store.getCertificate(normalizeSerial(cert.serialNumber));
    if (!rec || rec.fingerprintSha256 !== createHash("sha256").update(der).digest("hex")) {
      throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", "the evidence's device certificate was not issued by this CA");
    }
    if (rec.profile !== "device-identity" || !rec.deviceId) throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `a ${rec.profile} certificate cannot sign evidence`);
    if (rec.status !== "good") throw new EdgeTrustError("FORBIDDEN", `the device certificate ${rec.serial} is revoked`);
    const t = this.now();
    if (Date.parse(rec.notAfter) < t || Date.parse(rec.notBefore) > t) throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", "the device certificate is not valid now");
    return { cert, deviceId: rec.deviceId };
  }

  /** Verify evidence and appraise it; returns the EAR result (signed JWT) and the per-claim appraisal. */
  async verify(evidence: string): Promise<{ status: EarStatus; result: string; deviceId: string; claims: Record<string, ClaimAppraisal> }> {
    let header: jose.ProtectedHeaderParameters;
    try {
      header = jose.decodeProtectedHeader(evidence);
    } catch (e) {
      throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", "the evidence is not a compact JWS", { cause: e });
    }
    if (header.typ !== "eat+jwt") throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `evidence typ must be eat+jwt, got ${String(header.typ)}`);
    const { cert, deviceId } = await this.deviceCertificate(header);
    let payload: Uint8Array;
    try {
      const key = await jose.importX509(cert.toString("pem"), header.alg ?? "none");
      ({ payload } = await jose.compactVerify(evidence, key, { algorithms: ALGS }));
    } catch (e) {
      throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `evidence signature does not verify with the device certificate: ${(e as Error).message}`, { cause: e });
    }
    let claims: Evidence;
    try {
      const raw: unknown = JSON.parse(new TextDecoder().decode(payload));
      const { Value } = await import("@sinclair/typebox/value");
      if (!Value.Check(Evidence, raw)) throw new Error([...Value.Errors(Evidence, raw)].map((x) => `${x.path}: ${x.message}`).slice(0, 3).join("; "));
      claims = raw;
    } catch (e) {
      throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `evidence claims invalid: ${(e as Error).message}`, { cause: e });
    }
    this.consume(claims.eat_nonce);
    const uri = `edgetrust://${this.ca.options.trustDomain}/devices/${deviceId}`;
    if (claims.sub !== uri) throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `evidence sub ${claims.sub} is not the signing device ${uri}`);
    const appraisal = appraise(claims.measurements, this.references());
    const status = Object.values(appraisal).reduce<EarStatus>((acc, c) => worst(acc, c.status), "affirming");
    const iat = Math.floor(this.now() / 1000);
    const ear = {
      eat_profile: EAR_PROFILE, iat, exp: iat + this.config.resultTtlSeconds, sub: uri, eat_nonce: claims.eat_nonce,
      "ear.status": status,
      "ear.verifier-id": { developer: "edgetrust", build: "ca-service" },
      submods: { [deviceId]: { "ear.status": status, "ear.edgetrust.appraisal": appraisal } },
    };
    return { status, result: await this.sign(ear), deviceId, claims: appraisal };
  }

  private async sign(payload: Record<string, unknown>): Promise<string> {
    const issuer = this.ca.current();
    const alg = signingAlgorithmFor(issuer.key);
    const jwsAlg = alg.name === "ECDSA" ? (alg.hash === "SHA-384" ? "ES384" : "ES256") : "RS256";
    const x5c = [Buffer.from(issuer.cert.rawData).toString("base64")];
    const input = `${jose.base64url.encode(JSON.stringify({ alg: jwsAlg, typ: "ear+jwt", x5c }))}.${jose.base64url.encode(JSON.stringify(payload))}`;
    const sig = await this.ca.crypto.subtle.sign(alg.name === "ECDSA" ? { name: "ECDSA", hash: alg.hash } : { name: alg.name }, issuer.key, new TextEncoder().encode(input));
    return `${input}.${jose.base64url.encode(new Uint8Array(sig))}`;
  }

  /**
   * Check an EAR result presented with a renewal: signed by one of our issuing CAs, unexpired, `affirming`, and about
   * `deviceUri` (the device whose certificate is renewing).
   */
  async checkResult(result: string, deviceUri: string | undefined): Promise<void> {
    let header: jose.ProtectedHeaderParameters;
    try {
      header = jose.decodeProtectedHeader(result);
    } catch (e) {
      throw new EdgeTrustError("FORBIDDEN", "the attestation result is not a JWS", { cause: e });
    }
    const certB64 = header.x5c?.[0];
    const issuer = this.ca.issuers().find((c) => Buffer.from(c.cert.rawData).toString("base64") === certB64);
    if (!issuer) throw new EdgeTrustError("FORBIDDEN", "the attestation result was not signed by this CA");
    let payload: jose.JWTPayload;
    try {
      ({ payload } = await jose.jwtVerify(result, await jose.importX509(issuer.cert.toString("pem"), header.alg ?? "none"), {
        algorithms: ALGS, typ: "ear+jwt", currentDate: new Date(this.now()),
      }));
    } catch (e) {
      throw new EdgeTrustError("FORBIDDEN", `the attestation result does not verify: ${(e as Error).message}`, { cause: e });
    }
    if (payload["ear.status"] !== "affirming") throw new EdgeTrustError("FORBIDDEN", `renewal needs an affirming attestation result, got ${String(payload["ear.status"])}`);
    if (deviceUri && payload.sub !== deviceUri) throw new EdgeTrustError("FORBIDDEN", "the attestation result is about another device");
  }
}
