import "reflect-metadata";
import { X509Certificate as NodeX509 } from "node:crypto";
import { AsnConvert } from "@peculiar/asn1-schema";
import { SubjectPublicKeyInfo } from "@peculiar/asn1-x509";
import { ECParameters } from "@peculiar/asn1-ecc";
import { EdgeTrustError } from "../../common/index.js";
import { sha256Hex } from "../store.js";

/**
 * The enrollment model: what a provisioning line writes and what registration reads. Inputs are normalised here
 * (one place for the API, the CLI and bulk import), so the same enrollment always yields the same stored row and
 * the same `rowHash` — which is what makes a second import of the same file change nothing.
 */

/** Registration ids double as device ids: letters, digits and `. _ : @ $ = + -`, up to 128, no leading punctuation. */
export const REGISTRATION_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@$=+-]{0,127}$";
const REGISTRATION_ID_RE = new RegExp(REGISTRATION_ID_PATTERN);
const DNS_RE = /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;
const LABEL_KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;
export const GROUP_ID_PATTERN = "^[a-z0-9][a-z0-9._-]{0,63}$";

export const ENROLLMENT_PROFILES = ["device-identity", "leaf-device"] as const;
export type EnrollmentProfile = (typeof ENROLLMENT_PROFILES)[number];
export const INDIVIDUAL_ATTESTATIONS = ["publicKey", "x509", "tpm"] as const;
export type IndividualAttestation = (typeof INDIVIDUAL_ATTESTATIONS)[number];
export const GROUP_ATTESTATIONS = ["x509CA", "symmetricKey"] as const;
export type GroupAttestation = (typeof GROUP_ATTESTATIONS)[number];
export type EnrollmentStatus = "enabled" | "disabled";
const MAX_LIFETIME_DAYS = 3650;

export interface IndividualEnrollment {
  registrationId: string;
  attestation: IndividualAttestation;
  /** sha256 (hex) of the credential DER: SPKI for publicKey/tpm, the certificate for x509. */
  credentialSha256: string;
  /** The credential, base64 DER. */
  credential: string;
  profile: EnrollmentProfile;
  lifetimeDays: number | null;
  /** Issue an Edge CA certificate at registration (device-identity only). */
  edgeCa: boolean;
  dnsNames: string[];
  labels: Record<string, string>;
  status: EnrollmentStatus;
  lineId: string | null;
  rowHash: string;
  createdAt: string;
  updatedAt: string;
}

/** What callers send (API body, CSV/JSON import row, CLI flags). */
export interface IndividualEnrollmentInput {
  registrationId: string;
  attestation: IndividualAttestation;
  /** PEM (PUBLIC KEY / CERTIFICATE) or base64 DER. */
  credential: string;
  profile?: EnrollmentProfile;
  lifetimeDays?: number | null;
  edgeCa?: boolean;
  dnsNames?: string[];
  labels?: Record<string, string>;
  status?: EnrollmentStatus;
}

export interface EnrollmentGroup {
  id: string;
  attestation: GroupAttestation;
  /** x509CA: the CA that signed the devices' bootstrap certificates. */
  caCertPem: string | null;
  /** symmetricKey: whether a group key is set (the key itself is never returned). */
  hasGroupKey: boolean;
  profile: EnrollmentProfile;
  lifetimeDays: number | null;
  edgeCa: boolean;
  labels: Record<string, string>;
  status: EnrollmentStatus;
  lineId: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface EnrollmentGroupInput {
  id: string;
  attestation: GroupAttestation;
  caCertPem?: string;
  /** base64, at least 16 bytes; generated when absent for a symmetricKey group. */
  groupKey?: string;
  profile?: EnrollmentProfile;
  lifetimeDays?: number | null;
  edgeCa?: boolean;
  labels?: Record<string, string>;
  status?: EnrollmentStatus;
}

export function checkRegistrationId(id: unknown): string {
  if (typeof id !== "string" || !REGISTRATION_ID_RE.test(id)) {
    throw new EdgeTrustError("INVALID_INPUT", `registration id ${JSON.stringify(id)} is not allowed`, {
      hint: "ASCII letters, digits and . _ : @ $ = + - (up to 128), starting with a letter or digit",
    });
  }
  return id;
}

/** The DNS names an Edge CA is constrained to: the enrollment's, else the registration id when it is a host name. */
export function effectiveDnsNames(registrationId: string, dnsNames: readonly string[]): string[] {
  if (dnsNames.length > 0) return [...dnsNames];
  const d = registrationId.toLowerCase();
  return DNS_RE.test(d) ? [d] : [];
}

function bad(message: string): EdgeTrustError {
  return new EdgeTrustError("INVALID_INPUT", message);
}

/** PEM of `label` or bare base64 → DER bytes. */
export function derOf(text: string, labels: string[]): Buffer {
  const t = text.trim();
  const m = /^-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----$/.exec(t);
  if (m) {
    if (!labels.includes(m[1] ?? "")) throw bad(`expected PEM ${labels.join(" or ")}, got ${m[1] ?? "?"}`);
    return Buffer.from((m[2] ?? "").replace(/\s+/g, ""), "base64");
  }
  const b = t.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b) || b.length % 4 !== 0) throw bad("credential is neither PEM nor base64 DER");
  return Buffer.from(b, "base64");
}

const OID_EC = "1.2.840.10045.2.1";
const OID_RSA = "1.2.840.113549.1.1.1";
/** DER of the ECParameters of each supported named curve (built by the library once) → uncompressed point length. */
const EC_CURVES = [
  { params: Buffer.from(AsnConvert.serialize(new ECParameters({ namedCurve: "1.2.840.10045.3.1.7" }))), pointLength: 65 }, // P-256
  { params: Buffer.from(AsnConvert.serialize(new ECParameters({ namedCurve: "1.3.132.0.34" }))), pointLength: 97 }, // P-384
];

/**
 * A SubjectPublicKeyInfo we can issue for: EC P-256/P-384 (uncompressed point) or RSA >= 2048. Parsed with
 * @peculiar/asn1-x509 (much cheaper than OpenSSL 3's key decoders, which matters for 100k-row imports); the curve is
 * matched against library-built ECParameters. The CSR check at registration still runs the full verification.
 */
function checkSpki(der: Buffer): void {
  const spki = AsnConvert.parse(der, SubjectPublicKeyInfo);
  const alg = spki.algorithm.algorithm;
  const key = new Uint8Array(spki.subjectPublicKey);
  if (alg === OID_EC) {
    const params = spki.algorithm.parameters ? Buffer.from(spki.algorithm.parameters) : undefined;
    const curve = EC_CURVES.find((c) => params?.equals(c.params));
    if (!curve) throw bad("EC curve is not supported (P-256 or P-384)");
    if (key.length !== curve.pointLength || key[0] !== 4) throw bad("EC public key is not an uncompressed point of its curve");
  } else if (alg !== OID_RSA || key.length < 260) {
    throw bad(`key algorithm ${alg} is not supported (EC P-256/P-384 or RSA >= 2048)`);
  }
}

/** Parse and fingerprint a credential; throws INVALID_INPUT with the reason. */
function normalizeCredential(attestation: IndividualAttestation, credential: string): { der: Buffer; sha256: string } {
  if (typeof credential !== "string" || credential.length === 0 || credential.length > 16384) throw bad("credential is missing or too large");
  const der = derOf(credential, attestation === "x509" ? ["CERTIFICATE"] : ["PUBLIC KEY"]);
  try {
    if (attestation === "x509") {
      const c = new NodeX509(der);
      if (c.ca) throw bad("a bootstrap certificate must not be a CA certificate");
    } else {
      checkSpki(der);
    }
  } catch (e) {
    if (e instanceof EdgeTrustError) throw e;
    throw bad(attestation === "x509" ? "credential is not a DER X.509 certificate" : "credential is not a DER SubjectPublicKeyInfo");
  }
  return { der, sha256: sha256Hex(der) };
}

function checkLabels(labels: unknown): Record<string, string> {
  if (labels === undefined || labels === null) return {};
  if (typeof labels !== "object" || Array.isArray(labels)) throw bad("labels must be an object of strings");
  const out: Record<string, string> = {};
  const entries = Object.entries(labels as Record<string, unknown>);
  if (entries.length > 32) throw bad("at most 32 labels");
  for (const [k, v] of entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (!LABEL_KEY_RE.test(k)) throw bad(`label key ${JSON.stringify(k)} is not allowed`);
    if (typeof v !== "string" || v.length > 256) throw bad(`label ${k} must be a string of at most 256 characters`);
    out[k] = v;
  }
  return out;
}

function checkCommon(i: { profile?: unknown; lifetimeDays?: unknown; edgeCa?: unknown; status?: unknown }): { profile: EnrollmentProfile; lifetimeDays: number | null; edgeCa: boolean; status: EnrollmentStatus } {
  const profile = i.profile ?? "device-identity";
  if (!(ENROLLMENT_PROFILES as readonly unknown[]).includes(profile)) throw bad(`profile must be one of ${ENROLLMENT_PROFILES.join(", ")}`);
  const lt = i.lifetimeDays ?? null;
  if (lt !== null && (typeof lt !== "number" || !Number.isInteger(lt) || lt < 1 || lt > MAX_LIFETIME_DAYS)) throw bad(`lifetimeDays must be an integer 1..${MAX_LIFETIME_DAYS}`);
  const status = i.status ?? "enabled";
  if (status !== "enabled" && status !== "disabled") throw bad("status must be enabled or disabled");
  const edgeCa = i.edgeCa ?? profile === "device-identity";
  if (typeof edgeCa !== "boolean") throw bad("edgeCa must be a boolean");
  if (edgeCa && profile === "leaf-device") throw bad("a leaf-device enrollment cannot have an Edge CA");
  return { profile: profile as EnrollmentProfile, lifetimeDays: lt as number | null, edgeCa, status };
}

export type NormalizedIndividual = Omit<IndividualEnrollment, "lineId" | "createdAt" | "updatedAt">;

/** Validate and normalise one individual enrollment (every reason is one line, fit for an import report). */
export function normalizeIndividual(input: IndividualEnrollmentInput): NormalizedIndividual {
  const registrationId = checkRegistrationId(input.registrationId);
  if (!(INDIVIDUAL_ATTESTATIONS as readonly unknown[]).includes(input.attestation)) throw bad(`attestation must be one of ${INDIVIDUAL_ATTESTATIONS.join(", ")}`);
  const cred = normalizeCredential(input.attestation, input.credential);
  const c = checkCommon(input);
  const dnsIn = input.dnsNames ?? [];
  if (!Array.isArray(dnsIn) || dnsIn.length > 16) throw bad("dnsNames must be a list of at most 16 names");
  const dnsNames = [...new Set(dnsIn.map((d) => String(d).toLowerCase()))].sort();
  for (const d of dnsNames) if (!DNS_RE.test(d)) throw bad(`DNS name ${JSON.stringify(d)} is not a host name`);
  if (c.edgeCa && effectiveDnsNames(registrationId, dnsNames).length === 0) {
    throw bad("an Edge CA needs DNS names (name constraints): set dnsNames, or use a registration id that is a host name");
  }
  const labels = checkLabels(input.labels);
  const credential = cred.der.toString("base64");
  const rowHash = sha256Hex(JSON.stringify([input.attestation, cred.sha256, c.profile, c.lifetimeDays, c.edgeCa, dnsNames, labels, c.status]));
  return { registrationId, attestation: input.attestation, credentialSha256: cred.sha256, credential, ...c, dnsNames, labels, rowHash };
}

type NormalizedGroup = Omit<EnrollmentGroup, "lineId" | "createdAt" | "updatedAt" | "hasGroupKey"> & { groupKey: string | null };

export function normalizeGroup(input: EnrollmentGroupInput, generatedKey: () => string): NormalizedGroup {
  if (typeof input.id !== "string" || !new RegExp(GROUP_ID_PATTERN).test(input.id)) throw bad(`group id ${JSON.stringify(input.id)} is not allowed (lowercase letters, digits, . _ -)`);
  const c = checkCommon(input);
  const labels = checkLabels(input.labels);
  if (input.attestation === "x509CA") {
    if (!input.caCertPem) throw bad("an x509CA group needs caCertPem");
    const der = derOf(input.caCertPem, ["CERTIFICATE"]);
    let cert: NodeX509;
    try {
      cert = new NodeX509(der);
    } catch {
      throw bad("caCertPem is not a certificate");
    }
    if (!cert.ca) throw bad("caCertPem must be a CA certificate (basicConstraints CA:TRUE)");
    if (input.groupKey) throw bad("an x509CA group has no group key");
    return { id: input.id, attestation: "x509CA", caCertPem: cert.toString(), groupKey: null, ...c, labels };
  }
  if (input.attestation === "symmetricKey") {
    if (input.caCertPem) throw bad("a symmetricKey group has no CA certificate");
    const key = input.groupKey ?? generatedKey();
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(key) || Buffer.from(key, "base64").length < 16) throw bad("groupKey must be base64 of at least 16 bytes");
    return { id: input.id, attestation: "symmetricKey", caCertPem: null, groupKey: key, ...c, labels };
  }
  throw bad(`attestation must be one of ${GROUP_ATTESTATIONS.join(", ")}`);
}
