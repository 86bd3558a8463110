import "reflect-metadata";
import { randomBytes, createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import * as x509 from "@peculiar/x509";
import * as jose from "jose";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError, parseYamlStrict } from "../../common/index.js";
import { signingAlgorithmFor } from "../../pki/index.js";
import { MANIFEST_LIMITS, decodePayload, parseGeneralJws, parsePolicy, validateManifest } from "../../policy/index.js";
import { DeploymentStore } from "../deployments/store.js";
import type { CertificateAuthority } from "../ca.js";
import { normalizeSerial, sha256Hex, type CaStore } from "../store.js";
import { SingleUseTokens } from "../shared/single-use.js";
import type { AttestationConfig } from "./config.js";
import type { RouteDeps } from "../shared/route-deps.js";

export { AttestationConfig } from "./config.js";


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

const EAR_PROFILE = "tag:github.com,2023:veraison/ear";
const ALGS = ["ES256", "ES384", "RS256"];

type EarStatus = "affirming" | "warning" | "contraindicated";
/** One claim's appraisal: its status, always a reason, what was measured and which reference value decided it. */
interface ClaimAppraisal {
  status: EarStatus;
  reason: string;
  measured?: string;
  reference?: string;
}

type ClaimGroup = "agent" | "policy" | "trustRoot" | "manifest" | "modules";

/**
 * Reference values resolved to concrete digests — what `appraise` compares against. A reference-values file
 * (`ReferenceValues`) is one; a policy's `attestation:` section resolves to one (`referencesFromPolicy`).
 */
interface References {
  agent?: string[];
  policy?: string[];
  trustRoot?: string[];
  manifest?: { minVersion: number; digests?: string[]; absent?: EarStatus };
  modules?: Record<string, string[]>;
  /** The manifest must be one the deployment store serves (policy `manifest.digests: deployments`). */
  manifestFromDeployments?: boolean;
  /** Every module must run the digest the attested manifest pins (policy `modules: manifest`). */
  modulesFromManifest?: boolean;
  /** Per claim: what a mismatch gives (default contraindicated). */
  mismatch?: Partial<Record<ClaimGroup, "warning" | "contraindicated">>;
  /** Where the values came from, e.g. `policy /etc/edgetrust/policy.yaml`; each claim names `<source> attestation.<key>`. */
  source?: string;
  /** The rule text per claim group (e.g. `attestation.policy: self`). */
  rules?: Partial<Record<ClaimGroup, string>>;
}

/** The deployment an evidence's manifest digest names, as the verifier's deployment store holds it. */
interface AttestedManifest {
  deploymentId: string;
  version: number;
  /** module name → the image digest the manifest pins. */
  modules: Record<string, string>;
}

const sha256Text = (b: string | Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/**
 * Reference values from a policy file's `attestation:` section: `policy: self` is this file's sha256 (of the bytes
 * read), `trustRoot: policy` the sha256 of the file `trust.trustRoot` names. An invalid policy throws POLICY_INVALID
 * with every problem as file:line:col. A policy without the section appraises nothing (every claim a warning).
 */
export function referencesFromPolicy(file: string): References {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new EdgeTrustError("POLICY_INVALID", `cannot read the attestation policy ${file}: ${(e as Error).message}`, { cause: e, hint: "set ca.attestation.policyFile to the security team's policy.yaml" });
  }
  const p = parsePolicy(text, file);
  const a = p.attestation;
  const source = `policy ${file}`;
  if (!a) return { source };
  const refs: References = { source, rules: {} };
  const rules = refs.rules ?? {};
  if (a.agent) {
    refs.agent = a.agent;
    rules.agent = "attestation.agent";
  }
  if (a.policy !== undefined) {
    refs.policy = a.policy === "self" ? [sha256Text(text)] : a.policy;
    rules.policy = a.policy === "self" ? "attestation.policy: self (this policy file)" : "attestation.policy";
  }
  if (a.trustRoot !== undefined) {
    if (a.trustRoot === "policy") {
      if (!("trustRoot" in p.trust)) throw new EdgeTrustError("POLICY_INVALID", `${file}: attestation.trustRoot: policy needs trust.trustRoot`);
      const rootFile = resolve(dirname(file), p.trust.trustRoot);
      let bytes: Buffer;
      try {
        bytes = readFileSync(rootFile);
      } catch (e) {
        throw new EdgeTrustError("POLICY_INVALID", `${file}: attestation.trustRoot: policy — cannot read ${rootFile}: ${(e as Error).message}`, { cause: e });
      }
      refs.trustRoot = [sha256Text(bytes)];
      rules.trustRoot = `attestation.trustRoot: policy (${p.trust.trustRoot})`;
    } else {
      refs.trustRoot = a.trustRoot;
      rules.trustRoot = "attestation.trustRoot";
    }
  }
  if (a.manifest) {
    refs.manifest = { minVersion: a.manifest.minVersion, ...(Array.isArray(a.manifest.digests) ? { digests: a.manifest.digests } : {}), ...(a.manifest.absent ? { absent: a.manifest.absent } : {}) };
    refs.manifestFromDeployments = a.manifest.digests === "deployments";
    rules.manifest = `attestation.manifest (minVersion ${a.manifest.minVersion}${a.manifest.digests === "deployments" ? ", digests: deployments" : a.manifest.digests ? ", digests" : ""})`;
  }
  if (a.modules === "manifest") {
    refs.modulesFromManifest = true;
    rules.modules = "attestation.modules: manifest";
  } else if (a.modules) {
    refs.modules = a.modules;
    rules.modules = "attestation.modules";
  }
  if (a.mismatch) refs.mismatch = a.mismatch;
  return refs;
}

function loadReferenceValues(file: string): ReferenceValues {
  if (!file) return {};
  return parseYamlStrict(readFileSync(file, "utf8"), ReferenceValues, file).value as ReferenceValues;
}

/** The verifier's reference values from its config: `policyFile` (a policy's attestation section) or `referenceFile`. */
export function referencesFromConfig(config: AttestationConfig): References {
  if (config.policyFile && config.referenceFile) {
    throw new EdgeTrustError("INVALID_CONFIG", "ca.attestation: set policyFile or referenceFile, not both", { hint: "move the reference values into the policy's attestation: section" });
  }
  if (config.policyFile) return referencesFromPolicy(config.policyFile);
  if (!config.referenceFile) return {};
  const refs: References = { ...loadReferenceValues(config.referenceFile), source: `reference values ${config.referenceFile}` };
  refs.rules = { agent: "agent", policy: "policy", trustRoot: "trustRoot", manifest: "manifest", modules: "modules" };
  return refs;
}

function worst(a: EarStatus, b: EarStatus): EarStatus {
  const rank: Record<EarStatus, number> = { affirming: 0, warning: 1, contraindicated: 2 };
  return rank[a] >= rank[b] ? a : b;
}

const short = (d: string): string => (d.startsWith("sha256:") && d.length > 23 ? `${d.slice(0, 19)}…` : d);

/**
 * Appraise measurements against reference values, claim by claim: every claim gets a status, a reason, the measured
 * value and the reference that decided it. `attested` is the deployment the evidence's manifest digest names
 * (null: the store has none; undefined: not looked up).
 */
function appraise(m: Evidence["measurements"], ref: References, attested?: AttestedManifest | null): Record<string, ClaimAppraisal> {
  const out: Record<string, ClaimAppraisal> = {};
  const sev = (g: ClaimGroup): EarStatus => ref.mismatch?.[g] ?? "contraindicated";
  const where = (g: ClaimGroup): string => `${ref.source ? `${ref.source}: ` : ""}${ref.rules?.[g] ?? g}`;
  const digestClaim = (name: "agent" | "policy" | "trustRoot", value: string, allowed: string[] | undefined): void => {
    if (!allowed) out[name] = { status: "warning", reason: `no reference value for ${name}: not appraised`, measured: value };
    else if (allowed.includes(value)) out[name] = { status: "affirming", reason: `${name} digest is a reference value`, measured: value, reference: where(name) };
    else out[name] = { status: sev(name), reason: `${name} digest ${short(value)} is not a reference value (expected ${allowed.map(short).join(" or ")})`, measured: value, reference: where(name) };
  };
  digestClaim("agent", m.agent, ref.agent);
  digestClaim("policy", m.policy, ref.policy);
  digestClaim("trustRoot", m.trustRoot, ref.trustRoot);

  const mv = `${m.manifest.digest} v${m.manifest.version}`;
  const none = m.manifest.version === 0 && m.manifest.digest === "sha256:absent";
  if (!ref.manifest) out.manifest = { status: "warning", reason: "no reference value for the manifest: not appraised", measured: mv };
  else if (none) out.manifest = { status: ref.manifest.absent ?? "warning", reason: `no deployment accepted yet (attestation.manifest.absent: ${ref.manifest.absent ?? "warning"})`, measured: mv, reference: where("manifest") };
  else if (m.manifest.version < ref.manifest.minVersion) out.manifest = { status: sev("manifest"), reason: `manifest version ${m.manifest.version} is older than ${ref.manifest.minVersion} (rollback)`, measured: mv, reference: where("manifest") };
  else if (ref.manifest.digests && !ref.manifest.digests.includes(m.manifest.digest)) out.manifest = { status: sev("manifest"), reason: `manifest digest ${short(m.manifest.digest)} is not a reference value`, measured: mv, reference: where("manifest") };
  else if (ref.manifestFromDeployments && !attested) out.manifest = { status: sev("manifest"), reason: `manifest ${short(m.manifest.digest)} is not a deployment this CA serves`, measured: mv, reference: where("manifest") };
  else out.manifest = { status: "affirming", reason: `manifest version ${m.manifest.version} ≥ ${ref.manifest.minVersion}${attested ? ` and it is deployment ${attested.deploymentId} v${attested.version} as this CA serves it` : ""}`, measured: mv, reference: where("manifest") };

  if (ref.modulesFromManifest) {
    for (const [name, mod] of Object.entries(m.modules)) {
      const key = `module:${name}`;
      const pinned = attested?.modules[name];
      if (!attested) out[key] = { status: sev("modules"), reason: `the attested manifest ${short(m.manifest.digest)} is unknown to this CA: module ${name}'s image cannot be vouched for`, measured: mod.imageDigest, reference: where("modules") };
      else if (!pinned) out[key] = { status: sev("modules"), reason: `module ${name} is not in the attested manifest ${attested.deploymentId} v${attested.version}`, measured: mod.imageDigest, reference: where("modules") };
      else if (pinned !== mod.imageDigest) out[key] = { status: sev("modules"), reason: `module ${name} runs image ${short(mod.imageDigest)}, the manifest pins ${short(pinned)}`, measured: mod.imageDigest, reference: where("modules") };
      else out[key] = { status: "affirming", reason: `module ${name} runs the image digest ${attested.deploymentId} v${attested.version} pins`, measured: mod.imageDigest, reference: where("modules") };
    }
    for (const name of Object.keys(attested?.modules ?? {})) {
      if (!(name in m.modules)) out[`module:${name}`] = { status: "warning", reason: `module ${name} is in the attested manifest but not running`, reference: where("modules") };
    }
    return out;
  }
  const refMods = ref.modules;
  for (const [name, mod] of Object.entries(m.modules)) {
    const key = `module:${name}`;
    const allowed = refMods?.[name];
    if (!refMods) out[key] = { status: "warning", reason: "no reference values for modules: not appraised", measured: mod.imageDigest };
    else if (!allowed) out[key] = { status: sev("modules"), reason: `module ${name} is not in the reference values`, measured: mod.imageDigest, reference: where("modules") };
    else if (!allowed.includes(mod.imageDigest)) out[key] = { status: sev("modules"), reason: `module ${name} runs image ${mod.imageDigest}, not a reference digest`, measured: mod.imageDigest, reference: where("modules") };
    else out[key] = { status: "affirming", reason: `module ${name} runs a reference image digest`, measured: mod.imageDigest, reference: where("modules") };
  }
  for (const name of Object.keys(refMods ?? {})) {
    if (!(name in m.modules)) out[`module:${name}`] = { status: "warning", reason: `module ${name} is expected but not running`, reference: where("modules") };
  }
  return out;
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/**
 * The leaf of a JWS header's x5c (RFC 7515 §4.1.6: an array of base64 — not base64url — DER certificates). Anything
 * else — a string, numbers, empty, bad base64 — is invalid evidence (400), never an exception further down.
 */
function x5cLeaf(header: jose.ProtectedHeaderParameters, what: string): Buffer {
  const x5c: unknown = header.x5c;
  if (x5c === undefined) throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `the ${what} header has no x5c device certificate`);
  if (!Array.isArray(x5c) || x5c.length === 0 || x5c.length > 10) throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `the ${what} header's x5c must be an array of 1 to 10 base64 certificates`);
  const leaf: unknown = x5c[0];
  if (typeof leaf !== "string" || leaf.length > 16384 || leaf.length % 4 !== 0 || !BASE64.test(leaf)) {
    throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `the ${what} header's x5c[0] is not base64 (RFC 7515 §4.1.6)`);
  }
  return Buffer.from(leaf, "base64");
}

/**
 * The verifier: single-use, short-lived nonces; evidence verified with jose against the device certificate in its
 * x5c (which must be a device-identity certificate this CA issued, unrevoked and unexpired); an EAR result signed by
 * the current issuing CA (JWS built by hand because the CA key is in the HSM, verified with jose by anyone).
 */
export class AttestationVerifier {
  /** Nonces live in the store, so any process of a fleet checks a nonce another one made (single use fleet-wide). */
  private readonly nonces: SingleUseTokens;
  /** Outstanding nonces one client address may hold (per nonce lifetime, fleet-wide). */
  static readonly MAX_NONCES_PER_SOURCE = 100_000;

  constructor(
    private readonly ca: CertificateAuthority,
    private readonly store: CaStore,
    private readonly config: AttestationConfig,
    private readonly references: () => References = () => referencesFromConfig(config),
    private readonly now: () => number = Date.now,
  ) {
    // Fail at start on a bad policy or reference file (file:line:col), not at the first device; re-read per appraisal.
    this.references();
    this.nonces = new SingleUseTokens(store.db, "attestation-nonce", { ttlMs: config.nonceTtlSeconds * 1000, maxPerSource: AttestationVerifier.MAX_NONCES_PER_SOURCE, now });
  }

  /** The deployment whose served JWS has this sha256 (what the device stored as its accepted manifest). */
  private async attestedManifest(digest: string): Promise<AttestedManifest | null> {
    if (!/^sha256:[0-9a-f]{64}$/.test(digest)) return null;
    for (const rec of await new DeploymentStore(this.store).list()) {
      if (sha256Text(rec.jws) !== digest) continue;
      const jws = parseGeneralJws(rec.jws, MANIFEST_LIMITS.maxSignatures);
      if (typeof jws === "string") return null;
      const manifest = validateManifest(JSON.parse(new TextDecoder().decode(decodePayload(jws.payload, MANIFEST_LIMITS.maxPayloadBytes))) as unknown);
      const modules = Object.fromEntries(Object.entries(manifest.modules).map(([n, mod]) => [n, mod.image.slice(mod.image.lastIndexOf("@") + 1)]));
      return { deploymentId: rec.deploymentId, version: rec.version, modules };
    }
    return null;
  }

  /** Where the reference values come from (what the EAR result names), for the fleet view. */
  referenceSource(): string {
    try { return this.references().source ?? "none"; } catch { return "unreadable"; }
  }

  /** A fresh nonce for `source` (the client address): stored by its sha256, so the table holds no usable nonce. */
  async nonce(source = "local"): Promise<{ nonce: string; expiresAt: string }> {
    const nonce = randomBytes(32).toString("base64url");
    const exp = await this.nonces.put(sha256Hex(nonce), source, "");
    return { nonce, expiresAt: new Date(exp).toISOString() };
  }

  private async consume(nonce: string): Promise<void> {
    const r = await this.nonces.take(sha256Hex(nonce));
    if (!r) throw new EdgeTrustError("ATTESTATION_NONCE_INVALID", "the evidence's eat_nonce is unknown or was already used", { hint: "get a fresh nonce from /v1/attestation/nonce" });
    if (r.expired) throw new EdgeTrustError("ATTESTATION_NONCE_INVALID", "the evidence's eat_nonce has expired", { hint: "get a fresh nonce and attest again promptly" });
  }

  private async deviceCertificate(header: jose.ProtectedHeaderParameters): Promise<{ cert: x509.X509Certificate; deviceId: string }> {
    const der = x5cLeaf(header, "evidence");
    let cert: x509.X509Certificate;
    try {
      cert = new x509.X509Certificate(new Uint8Array(der));
    } catch (e) {
      throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", "the evidence's x5c[0] is not a DER X.509 certificate", { cause: e });
    }
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
    if (typeof header.alg !== "string" || !ALGS.includes(header.alg)) throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `evidence alg must be one of ${ALGS.join(", ")}`);
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
    await this.consume(claims.eat_nonce);
    const uri = `edgetrust://${this.ca.options.trustDomain}/devices/${deviceId}`;
    if (claims.sub !== uri) throw new EdgeTrustError("ATTESTATION_EVIDENCE_INVALID", `evidence sub ${claims.sub} is not the signing device ${uri}`);
    const refs = this.references();
    const attested = refs.manifestFromDeployments || refs.modulesFromManifest ? await this.attestedManifest(claims.measurements.manifest.digest) : undefined;
    const appraisal = appraise(claims.measurements, refs, attested);
    const status = Object.values(appraisal).reduce<EarStatus>((acc, c) => worst(acc, c.status), "affirming");
    const iat = Math.floor(this.now() / 1000);
    const ear = {
      eat_profile: EAR_PROFILE, iat, exp: iat + this.config.resultTtlSeconds, sub: uri, eat_nonce: claims.eat_nonce,
      "ear.status": status,
      "ear.verifier-id": { developer: "edgetrust", build: "ca-service" },
      submods: { [deviceId]: { "ear.status": status, "ear.edgetrust.reference": refs.source ?? "none", "ear.edgetrust.appraisal": appraisal } },
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
    let der: Buffer;
    try {
      der = x5cLeaf(header, "attestation result");
    } catch (e) {
      throw new EdgeTrustError("FORBIDDEN", `the attestation result is malformed: ${(e as Error).message}`, { cause: e });
    }
    const issuer = this.ca.issuers().find((c) => der.equals(Buffer.from(c.cert.rawData)));
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

const verifiers = new WeakMap<RouteDeps["ca"], AttestationVerifier>();
/** One verifier per CA, shared by the attestation routes and the renewal gate (one nonce store, one reference set). */
export function verifierFor(deps: RouteDeps): AttestationVerifier {
  let v = verifiers.get(deps.ca);
  if (!v) {
    v = new AttestationVerifier(deps.ca, deps.store, deps.config.attestation);
    verifiers.set(deps.ca, v);
  }
  return v;
}
