import "reflect-metadata";
import { KeyObject, createHash, sign as nodeSign } from "node:crypto";
import * as asn1js from "asn1js";
import { AsnConvert } from "@peculiar/asn1-schema";
import { Certificate as AsnCertificate, GeneralName, GeneralNames, Name as AsnName, Version } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";
import { keyStoreKeyOf } from "../hsm/index.js";
import { ModuleAttestationAsn, OID_MODULE_ATTESTATION } from "./attestation.js";
import {
  authorityKeyId, fixedExtensions, issueCertificateReference, nameConstraintsExtension, planCertificate, subjectName,
  type CertificatePlan, type IssueParams, type Issuer, type SubjectFields,
} from "./issue-reference.js";
import { tlv } from "./der.js";
import { knownKeyIdentifier, signingAlgorithmFor, toPublicKey } from "./keys.js";

export { randomSerial, checkModuleDevice } from "./issue-reference.js";
export type { IssueParams, Issuer, SubjectFields, IdentityFields } from "./issue-reference.js";

/**
 * The certificate factory: one issuance core for every path (ca-service issue/register/EST/DPS/renew, the device's
 * module and Edge-CA certificates, certs-dev).
 *
 * Per (profile, issuer, URLs) a template is built once, with @peculiar/x509 and @peculiar/asn1-schema: the DER of the
 * version, the signature AlgorithmIdentifier, the issuer Name and every extension that does not change (basic
 * constraints, key usage, EKU, AKI, CRL DP, AIA), plus the extnID prefix of each extension that does. Per
 * certificate only the variable fields are written — serial, validity, subject (cached per DN), SPKI, SKI, SANs, the
 * module-attestation extension, an Edge CA's name constraints — and the TBSCertificate is signed: with Node's crypto
 * (synchronous, DER signature) for software keys, through the KeyStore shim (the PKCS#11 session pool) for HSM keys.
 *
 * The only DER written here by hand are the identifier and length octets that wrap those parts (`tlv` in der.ts, X.690
 * §8.1.2-8.1.3); `factory.test.ts` decodes a certificate from each profile made here and the same certificate made
 * by `issueCertificateReference` (@peculiar/x509's generator) and finds every byte of the TBSCertificate equal.
 */

/** X.690 identifier octets of the universal types (and the one context tag) the factory wraps around parts. */
const TAG = {
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  SET: 0x31,
  /** TBSCertificate `extensions [3] EXPLICIT Extensions` (context-specific, constructed, number 3). */
  EXTENSIONS: 0xa3,
  /** GeneralName `dNSName [2] IMPLICIT IA5String` (context-specific, primitive, number 2). */
  DNS_NAME: 0x82,
  /** GeneralName `uniformResourceIdentifier [6] IMPLICIT IA5String` (context-specific, primitive, number 6). */
  URI: 0x86,
} as const;

/** Raw bytes of the elements of a DER SEQUENCE made by @peculiar (template building only, never per certificate). */
function elementsOf(der: ArrayBuffer | Uint8Array): Uint8Array[] {
  const buf = der instanceof Uint8Array ? der : new Uint8Array(der);
  const parsed = asn1js.fromBER(buf);
  if (parsed.offset === -1 || !(parsed.result instanceof asn1js.Sequence)) throw new EdgeTrustError("INTERNAL", "template part is not a DER SEQUENCE");
  return parsed.result.valueBlock.value.map((e) => new Uint8Array(e.valueBeforeDecodeView));
}

/** The serial as the generator writes it: the hex value as a positive INTEGER in its minimal form. */
function serialDer(hex: string): Uint8Array {
  let b = Buffer.from(hex.length % 2 ? `0${hex}` : hex, "hex");
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  b = b.subarray(i);
  return (b[0] ?? 0) & 0x80 ? tlv(TAG.INTEGER, Uint8Array.of(0), b) : tlv(TAG.INTEGER, b);
}

const pad = (n: number, w = 2): string => String(n).padStart(w, "0");

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; always whole seconds, always Z. */
function timeDer(d: Date): Uint8Array {
  const y = d.getUTCFullYear();
  const rest = `${pad(d.getUTCMonth() + 1)}${pad(d.getUTCDate())}${pad(d.getUTCHours())}${pad(d.getUTCMinutes())}${pad(d.getUTCSeconds())}Z`;
  if (y >= 1950 && y < 2050) return tlv(TAG.UTC_TIME, Buffer.from(`${pad(y % 100)}${rest}`, "latin1"));
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(`${pad(y, 4)}${rest}`, "latin1"));
}

/** SHA-1 of the subjectPublicKey bits: the key identifier @peculiar/x509 (and RFC 5280 §4.2.1.2 method 1) uses. */
function keyIdentifier(spki: Uint8Array): Uint8Array {
  const known = knownKeyIdentifier(spki);
  if (known) return known;
  const parsed = asn1js.fromBER(spki);
  const bits = parsed.result instanceof asn1js.Sequence ? parsed.result.valueBlock.value[1] : undefined;
  if (!(bits instanceof asn1js.BitString)) throw new EdgeTrustError("PKI_PROFILE_VIOLATION", "public key cannot be parsed");
  return createHash("sha1").update(bits.valueBlock.valueHexView).digest();
}

/** Signs a TBSCertificate; returns the DER signature value that goes into the BIT STRING. */
type DerSigner = (tbs: Uint8Array) => Promise<Uint8Array>;

const ecdsaFormatter = new x509.AsnEcSignatureFormatter();

function signerFor(issuer: Issuer): DerSigner {
  const key = issuer.signingKey;
  const alg = signingAlgorithmFor(key);
  const webCrypto = issuer.crypto ?? globalThis.crypto;
  const nodeHash = alg.hash.replace("SHA-", "sha");
  // A software key of Node's own WebCrypto: sign synchronously with the same OpenSSL key, DER out (no conversion).
  if (webCrypto === globalThis.crypto && key instanceof globalThis.CryptoKey && (alg.name === "ECDSA" || alg.name === "RSASSA-PKCS1-v1_5")) {
    const ko = KeyObject.from(key);
    return (tbs) => Promise.resolve(nodeSign(nodeHash, tbs, alg.name === "ECDSA" ? { key: ko, dsaEncoding: "der" } : ko));
  }
  // A KeyStore key (HSM through the PKCS#11 session pool, or the dev store): signed by its store directly — the same
  // call the WebCrypto shim would make, without the shim's round trip and @peculiar's signature re-encoding.
  const bound = keyStoreKeyOf(key);
  if (bound && (alg.name === "ECDSA" || alg.name === "RSASSA-PKCS1-v1_5")) {
    const scheme = { name: alg.name, hash: alg.hash } as const;
    const { store, ref } = bound;
    if (scheme.name === "ECDSA") return async (tbs) => ecdsaSigValue(await store.sign(ref, scheme, tbs));
    return async (tbs) => store.sign(ref, scheme, tbs);
  }
  // Any other WebCrypto (a caller's own): its shape, converted as x509 does.
  return async (tbs) => {
    const raw = await webCrypto.subtle.sign(alg, key, new Uint8Array(tbs));
    if (alg.name !== "ECDSA") return new Uint8Array(raw);
    const der = ecdsaFormatter.toAsnSignature({ ...key.algorithm, ...alg } as EcdsaParams & EcKeyAlgorithm, raw);
    if (!der) throw new EdgeTrustError("INTERNAL", "cannot encode the ECDSA signature");
    return new Uint8Array(der);
  };
}

/** A DER INTEGER of an unsigned big-endian number (X.690 §8.3: minimal octets, a 0x00 first when the top bit is set). */
function unsignedInteger(b: Uint8Array): Uint8Array {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  const v = b.subarray(i);
  return (v[0] as number) & 0x80 ? tlv(TAG.INTEGER, Uint8Array.of(0), v) : tlv(TAG.INTEGER, v);
}

/**
 * `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 5480 §2.2, RFC 5758 §3.2) from the IEEE P1363 `r || s`
 * a KeyStore returns (PKCS#11 CKM_ECDSA). `hsm-signer.test.ts` checks it byte for byte against @peculiar's formatter.
 */
export function ecdsaSigValue(p1363: Uint8Array): Uint8Array {
  if (p1363.length === 0 || p1363.length % 2 !== 0) throw new EdgeTrustError("INTERNAL", `an ECDSA signature of ${p1363.length} bytes is not r || s`);
  const half = p1363.length / 2;
  return tlv(TAG.SEQUENCE, unsignedInteger(p1363.subarray(0, half)), unsignedInteger(p1363.subarray(half)));
}

/**
 * GeneralNames of the names the profiles write: RFC 5280 §4.2.1.6 `dNSName [2] IA5String`, `uniformResourceIdentifier
 * [6] IA5String`, IMPLICIT tags (context-specific, primitive). The values were checked as ASCII host names and
 * `edgetrust:` URIs by the plan; anything else goes through asn1-schema.
 */
function generalNames(sans: x509.JsonGeneralName[]): Uint8Array {
  if (sans.every((n) => (n.type === "dns" || n.type === "url") && /^[\x21-\x7e]+$/.test(n.value))) {
    return tlv(TAG.SEQUENCE, ...sans.map((n) => tlv(n.type === "dns" ? TAG.DNS_NAME : TAG.URI, Buffer.from(n.value, "latin1"))));
  }
  const names = new GeneralNames(sans.map((n) => new GeneralName(n.type === "dns" ? { dNSName: n.value } : { uniformResourceIdentifier: n.value })));
  return new Uint8Array(AsnConvert.serialize(names));
}

/**
 * A subject of one plain CN (what the CAs write: device and module ids) without the generic DN encoder: the
 * attribute's OID and string type exactly as @peculiar/x509's Name picks them (PrintableString when the value fits,
 * else UTF8String). Values that need escaping or other attributes take the x509 path.
 */
function plainCnSubject(s: SubjectFields): { der: Uint8Array; text: string } | undefined {
  if (s.organization !== undefined || s.organizationalUnit !== undefined || s.country !== undefined) return undefined;
  const cn = s.commonName;
  if (!/^[A-Za-z0-9][A-Za-z0-9._:@-]*$/.test(cn)) return undefined;
  const value = tlv(x509.Name.isPrintableString(cn) ? TAG.PRINTABLE_STRING : TAG.UTF8_STRING, Buffer.from(cn, "utf8"));
  return { der: tlv(TAG.SEQUENCE, tlv(TAG.SET, tlv(TAG.SEQUENCE, CN_OID, value))), text: `CN=${cn}` };
}

/** The DER of the commonName OID (2.5.4.3), taken from a Name @peculiar/x509 encodes. */
const CN_OID: Uint8Array = (() => {
  const rdn = elementsOf(new x509.Name([{ CN: ["x"] }]).toArrayBuffer())[0];
  const set = rdn ? asn1js.fromBER(rdn).result : undefined;
  const atv = set instanceof asn1js.Set ? set.valueBlock.value[0] : undefined;
  const oid = atv instanceof asn1js.Sequence ? atv.valueBlock.value[0] : undefined;
  if (!oid) throw new Error("cannot encode the commonName OID");
  return new Uint8Array(oid.valueBeforeDecodeView);
})();

/** What the factory keeps for one (profile, issuer, URLs): everything that is the same in each certificate. */
interface Template {
  version: Uint8Array;
  signatureAlgorithm: Uint8Array;
  issuerName: Uint8Array;
  /** Extensions before SKI (basicConstraints, keyUsage, EKU), DER each. */
  head: Uint8Array[];
  /** The AKI extension, DER. */
  aki: Uint8Array;
  /** CRL DP and AIA, DER each. */
  tail: Uint8Array[];
  /** extnID (+ critical) DER of each variable extension, by OID. */
  prefix: Map<string, Uint8Array>;
  sign: DerSigner;
}

const OID_SKI = "2.5.29.14";
const OID_SAN = "2.5.29.17";
const OID_NAME_CONSTRAINTS = "2.5.29.30";

/** extnID (and critical) of an extension, DER: all its elements but the last (the extnValue OCTET STRING). */
function extensionPrefix(ext: x509.Extension): Uint8Array {
  return Buffer.concat(elementsOf(ext.rawData).slice(0, -1));
}

function variableExtension(prefix: Uint8Array | undefined, value: Uint8Array): Uint8Array {
  if (!prefix) throw new EdgeTrustError("INTERNAL", "template has no prefix for this extension");
  return tlv(TAG.SEQUENCE, prefix, tlv(TAG.OCTET_STRING, value));
}

async function buildTemplate(plan: CertificatePlan, issuer: Issuer): Promise<Template> {
  const issuerCert = plan.issuerCert;
  if (!issuerCert) throw new EdgeTrustError("INTERNAL", "self-signed certificates are made by the reference path");
  const crypto = issuer.crypto ?? globalThis.crypto;
  const fixed = fixedExtensions(plan, await authorityKeyId(issuerCert, "", crypto));
  // The signature AlgorithmIdentifier exactly as @peculiar/x509 writes it for this key.
  const algorithm = { ...signingAlgorithmFor(issuer.signingKey), ...issuer.signingKey.algorithm };
  const sigAlg = new Uint8Array(AsnConvert.serialize(new x509.AlgorithmProvider().toAsnAlgorithm(algorithm)));
  // Version [0] EXPLICIT v3: the first element of a v3 TBSCertificate serialised by asn1-schema (the issuer's own).
  const sample = AsnConvert.parse(issuerCert.rawData, AsnCertificate).tbsCertificate;
  sample.version = Version.v3;
  const version = elementsOf(AsnConvert.serialize(sample))[0];
  if (!version) throw new EdgeTrustError("INTERNAL", "cannot encode the certificate version");
  // The issuer Name re-serialised the way the generator does (parse + serialize with asn1-schema).
  const issuerName = new Uint8Array(AsnConvert.serialize(AsnConvert.parse(issuerCert.subjectName.toArrayBuffer(), AsnName)));
  const prefix = new Map<string, Uint8Array>([
    [OID_SKI, extensionPrefix(new x509.SubjectKeyIdentifierExtension("00", false))],
    [OID_SAN, extensionPrefix(new x509.SubjectAlternativeNameExtension([{ type: "dns", value: "x" }], false))],
    [OID_MODULE_ATTESTATION, extensionPrefix(new x509.Extension(OID_MODULE_ATTESTATION, false, new Uint8Array([5, 0])))],
    [OID_NAME_CONSTRAINTS, extensionPrefix(nameConstraintsExtension("x", ["x"]))],
  ]);
  return {
    version, signatureAlgorithm: sigAlg, issuerName,
    head: fixed.head.map((e) => new Uint8Array(e.rawData)), aki: new Uint8Array(fixed.aki.rawData), tail: fixed.tail.map((e) => new Uint8Array(e.rawData)),
    prefix, sign: signerFor(issuer),
  };
}

/** Templates per issuer certificate object (CAs keep theirs for the process), then by profile and URLs. */
const templates = new WeakMap<x509.X509Certificate, WeakMap<CryptoKey, Map<string, Promise<Template>>>>();
const TEMPLATES_PER_ISSUER = 64;

/**
 * The template promise is what is cached: a burst of concurrent first issuances (a CA starting under load) builds
 * one template, not one each (64 callers each building their own cost ~5 ms apiece at start-up).
 */
function templateFor(plan: CertificatePlan, issuer: Issuer): Promise<Template> {
  const cert = plan.issuerCert as x509.X509Certificate;
  let byKey = templates.get(cert);
  if (!byKey) templates.set(cert, (byKey = new WeakMap()));
  let byProfile = byKey.get(issuer.signingKey);
  if (!byProfile) byKey.set(issuer.signingKey, (byProfile = new Map()));
  const p = plan.profile;
  const key = JSON.stringify([p.name, p.ca, p.pathLength, p.keyUsage, p.extendedKeyUsage, plan.crlUrl, plan.ocspUrl, plan.caIssuersUrl]);
  let t = byProfile.get(key);
  if (!t) {
    const building = buildTemplate(plan, issuer);
    if (byProfile.size >= TEMPLATES_PER_ISSUER) byProfile.delete(byProfile.keys().next().value ?? "");
    byProfile.set(key, building);
    // A failed build is not remembered: the next issuance tries again.
    const profiles = byProfile;
    building.catch(() => { if (profiles.get(key) === building) profiles.delete(key); });
    t = building;
  }
  return t;
}

/** Subject DNs, DER and text, remembered for recent records (renewals and re-registrations repeat them). */
const subjects = new Map<string, { der: Uint8Array; text: string }>();
const SUBJECT_CACHE = 4096;

function subjectOf(s: SubjectFields): { der: Uint8Array; text: string } {
  // A plain CN costs less to write than to look up under a JSON key; only the x509 path is worth remembering.
  const plain = plainCnSubject(s);
  if (plain) return plain;
  const k = JSON.stringify([s.commonName, s.organization, s.organizationalUnit, s.country]);
  let v = subjects.get(k);
  if (!v) {
    const name = subjectName(s);
    v = { der: new Uint8Array(name.toArrayBuffer()), text: name.toString() };
    if (subjects.size >= SUBJECT_CACHE) subjects.delete(subjects.keys().next().value ?? "");
    subjects.set(k, v);
  }
  return v;
}

/**
 * The module-attestation extension value, DER, per (image digest, manifest version, deployment): the same for every
 * certificate of a module until it is re-attested, so asn1-schema serialises it once, not per certificate (it was
 * ~5 % of the identity daemon's thread per module certificate).
 */
const attestations = new Map<string, Uint8Array>();
const ATTESTATION_CACHE = 1024;

function attestationDer(at: NonNullable<CertificatePlan["attestation"]>): Uint8Array {
  const k = JSON.stringify([at.imageDigest, at.manifestVersion, at.deploymentId]);
  let der = attestations.get(k);
  if (!der) {
    const a = new ModuleAttestationAsn({ version: 1, imageDigest: at.imageDigest, manifestVersion: at.manifestVersion });
    if (at.deploymentId !== undefined) a.deploymentId = at.deploymentId;
    der = new Uint8Array(AsnConvert.serialize(a));
    if (attestations.size >= ATTESTATION_CACHE) attestations.delete(attestations.keys().next().value ?? "");
    attestations.set(k, der);
  }
  return der;
}

/** A certificate the factory made: its DER and the fields callers record, without parsing it again. */
interface IssuedCertificate {
  der: Uint8Array;
  /** Hex without a sign byte, as `X509Certificate.serialNumber` writes it. */
  serial: string;
  /** The subject DN as text (`CN=dev-1`). */
  subject: string;
  notBefore: Date;
  notAfter: Date;
  sans: x509.JsonGeneralName[];
  /** SHA-256 of the DER, hex. */
  fingerprintSha256: string;
  spki: Uint8Array;
  pem(): string;
  /** The parsed certificate (built on first use). */
  certificate(): x509.X509Certificate;
}

/**
 * PEM of a certificate exactly as @peculiar/x509's PemConverter writes it (RFC 7468: the label lines, base64 in lines
 * of 64, LF, no final newline) — with Node's base64 encoder instead of a binary string through `btoa`.
 */
export function certificatePem(der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
  let body = "";
  for (let i = 0; i < b64.length; i += 64) body += `${b64.slice(i, i + 64)}\n`;
  return `-----BEGIN CERTIFICATE-----\n${body}-----END CERTIFICATE-----`;
}

function issued(der: Uint8Array, plan: CertificatePlan, subject: string): IssuedCertificate {
  let parsed: x509.X509Certificate | undefined;
  const serialBytes = Buffer.from(plan.serial.length % 2 ? `0${plan.serial}` : plan.serial, "hex");
  let i = 0;
  while (i < serialBytes.length - 1 && serialBytes[i] === 0) i++;
  return {
    der, serial: serialBytes.subarray(i).toString("hex"), subject, notBefore: plan.notBefore, notAfter: plan.notAfter, sans: plan.sans,
    fingerprintSha256: createHash("sha256").update(der).digest("hex"), spki: plan.spki,
    pem: () => certificatePem(der),
    certificate: () => (parsed ??= new x509.X509Certificate(new Uint8Array(der))),
  };
}

async function spkiOf(params: IssueParams): Promise<Uint8Array> {
  const k = params.publicKey;
  if (k instanceof Uint8Array) return k;
  if (k instanceof ArrayBuffer) return new Uint8Array(k);
  return new Uint8Array((await toPublicKey(k, params.issuer.crypto ?? globalThis.crypto)).rawData);
}

/**
 * Issue a certificate under a profile and return its DER with the recorded fields. The subject, SANs and extensions
 * come from the profile and the caller's record; nothing is copied from a CSR. Root certificates (self-signed) go
 * through the reference path.
 */
export async function issueCertificateDer(params: IssueParams): Promise<IssuedCertificate> {
  const plan = await planCertificate(params, await spkiOf(params));
  const subject = subjectOf(plan.subjectFields);
  if (!plan.issuerCert) {
    const cert = await issueCertificateReference(params);
    return issued(new Uint8Array(cert.rawData), plan, subject.text);
  }
  const t = await templateFor(plan, params.issuer);
  const extensions: Uint8Array[] = [...t.head, variableExtension(t.prefix.get(OID_SKI), tlv(TAG.OCTET_STRING, keyIdentifier(plan.spki))), t.aki];
  if (plan.attestation) extensions.push(variableExtension(t.prefix.get(OID_MODULE_ATTESTATION), attestationDer(plan.attestation)));
  if (plan.nameConstraints) {
    extensions.push(new Uint8Array(nameConstraintsExtension(plan.nameConstraints.trustDomain, plan.nameConstraints.dnsNames).rawData));
  }
  if (plan.sans.length > 0) extensions.push(variableExtension(t.prefix.get(OID_SAN), generalNames(plan.sans)));
  extensions.push(...t.tail);
  const tbs = tlv(TAG.SEQUENCE,
    t.version, serialDer(plan.serial), t.signatureAlgorithm, t.issuerName,
    tlv(TAG.SEQUENCE, timeDer(plan.notBefore), timeDer(plan.notAfter)),
    subject.der, plan.spki, tlv(TAG.EXTENSIONS, tlv(TAG.SEQUENCE, ...extensions)));
  const signature = await t.sign(tbs);
  const der = tlv(TAG.SEQUENCE, tbs, t.signatureAlgorithm, tlv(TAG.BIT_STRING, Uint8Array.of(0), signature));
  return issued(der, plan, subject.text);
}

/** `issueCertificateDer`, parsed: for callers that work with @peculiar/x509 objects. */
export async function issueCertificate(params: IssueParams): Promise<x509.X509Certificate> {
  return (await issueCertificateDer(params)).certificate();
}

