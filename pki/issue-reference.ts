import "reflect-metadata";
import { randomFillSync } from "node:crypto";
import { AsnConvert } from "@peculiar/asn1-schema";
import { GeneralName as AsnGeneralName, GeneralSubtree, GeneralSubtrees, NameConstraints, id_ce_nameConstraints } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";
import { checkModuleAttestation, moduleAttestationExtension, type ModuleAttestation } from "./attestation.js";
import { certificateIdentity, checkDnsName, checkTrustDomain, deviceUri, moduleUri } from "./identity.js";
import { keyAlgorithmOfSpki, signingAlgorithmFor, toPublicKey, type PublicKeyInput } from "./keys.js";
import { getProfile, type Profile, type ProfileName } from "./profiles.js";
import { wholeSeconds } from "./time.js";

/** Subject DN fields — taken from the enrollment record, never copied from a CSR. */
export interface SubjectFields {
  commonName: string;
  organization?: string;
  organizationalUnit?: string;
  /** ISO 3166 two-letter code. */
  country?: string;
}

/** Identity fields the profile needs (from the record). */
export interface IdentityFields {
  trustDomain?: string;
  deviceId?: string;
  moduleId?: string;
  /** edge-ca: the device's DNS names (name constraints); edge-hub-server: extra DNS SANs. */
  dnsNames?: string[];
  /** edge-hub-server: the device's host name, added to `edgehub` and `localhost`. */
  hostName?: string;
}

export interface Issuer {
  /** The issuing CA's certificate; omit for a self-signed root (profile root-ca). */
  certificate?: x509.X509Certificate;
  /** The CA private key: a Node CryptoKey or a KeyStore shim key (then pass the shim as `crypto`). */
  signingKey: CryptoKey;
  /** WebCrypto to sign with: `keyStoreCrypto()` for KeyStore keys; default Node's. */
  crypto?: Crypto;
}

export interface IssueParams {
  profile: Profile | ProfileName;
  subject: SubjectFields;
  identity?: IdentityFields;
  /** module profile: what device-identity attested. */
  attestation?: ModuleAttestation;
  publicKey: PublicKeyInput;
  issuer: Issuer;
  /** Hex; default 16 random bytes (≥ 120 bits of entropy), positive. */
  serial?: string;
  /** Default: now − 5 minutes (clock skew). */
  notBefore?: Date;
  /** Override the profile lifetime. */
  lifetimeSeconds?: number;
  crlUrl?: string;
  ocspUrl?: string;
  caIssuersUrl?: string;
}

const SKEW_MS = 5 * 60 * 1000;

/**
 * CSPRNG output for serials, drawn 256 serials at a time: one `randomBytes(16)` is a synchronous crypto job costing
 * ~3 µs, the pooled draw ~0.4 µs (the way Node's own `randomUUID` batches its entropy). Each byte is used once.
 */
const serialEntropy = Buffer.allocUnsafe(16 * 256);
let serialAt = serialEntropy.length;

/** 16 random bytes, top bit clear (positive INTEGER, no 0x00 pad) and a non-zero first byte (full 16 octets). */
export function randomSerial(): string {
  if (serialAt + 16 > serialEntropy.length) {
    randomFillSync(serialEntropy);
    serialAt = 0;
  }
  const b = Buffer.from(serialEntropy.subarray(serialAt, (serialAt += 16)));
  b[0] = (b[0] ?? 0) & 0x7f || 0x01;
  return b.toString("hex");
}

function checkSubject(s: SubjectFields): void {
  if (!s.commonName || s.commonName.length > 64) throw new EdgeTrustError("INVALID_INPUT", "subject commonName must be 1..64 characters");
  if (s.country !== undefined && !/^[A-Z]{2}$/.test(s.country)) throw new EdgeTrustError("INVALID_INPUT", `country must be two capital letters, got ${JSON.stringify(s.country)}`);
}

function buildName(s: SubjectFields): x509.Name {
  checkSubject(s);
  const rdns: Record<string, string[]>[] = [];
  if (s.country !== undefined) rdns.push({ C: [s.country] });
  if (s.organization !== undefined) rdns.push({ O: [s.organization] });
  if (s.organizationalUnit !== undefined) rdns.push({ OU: [s.organizationalUnit] });
  rdns.push({ CN: [s.commonName] });
  return new x509.Name(rdns);
}

function need<T>(v: T | undefined, what: string, profile: string): T {
  if (v === undefined || v === "") throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `profile ${profile} needs ${what}`);
  return v;
}

export function nameConstraintsExtension(trustDomain: string, dnsNames: string[]): x509.Extension {
  const subtrees = [
    new GeneralSubtree({ base: new AsnGeneralName({ uniformResourceIdentifier: trustDomain }) }),
    ...dnsNames.map((d) => new GeneralSubtree({ base: new AsnGeneralName({ dNSName: d }) })),
  ];
  // No IP addresses at all: an Edge CA (a key on a device) must not vouch for any address. Excluding 0.0.0.0/0 and
  // ::/0 closes the gap that "permitted" leaves open for name types it does not list.
  const excluded = ["0.0.0.0/0", "::/0"].map((cidr) => new GeneralSubtree({ base: new AsnGeneralName({ iPAddress: cidr }) }));
  const nc = new NameConstraints({ permittedSubtrees: new GeneralSubtrees(subtrees), excludedSubtrees: new GeneralSubtrees(excluded) });
  return new x509.Extension(id_ce_nameConstraints, true, AsnConvert.serialize(nc));
}

/** URLs that passed `checkUrl` (a CA passes the same two or three to every issuance). */
const checkedUrls = new Set<string>();

function checkUrl(u: string, what: string): void {
  if (checkedUrls.has(u)) return;
  let p: URL;
  try {
    p = new URL(u);
  } catch {
    throw new EdgeTrustError("INVALID_INPUT", `${what} ${JSON.stringify(u)} is not a URL`);
  }
  if (p.protocol !== "http:" && p.protocol !== "https:") throw new EdgeTrustError("INVALID_INPUT", `${what} must be http(s)`);
  if (checkedUrls.size >= 64) checkedUrls.clear();
  checkedUrls.add(u);
}

/** Everything a certificate needs, checked, before any encoding: what both the factory and the reference path use. */
export interface CertificatePlan {
  profile: Profile;
  spki: Uint8Array;
  subjectFields: SubjectFields;
  issuerCert: x509.X509Certificate | undefined;
  notBefore: Date;
  notAfter: Date;
  serial: string;
  /** In certificate order; `sans` become one SAN extension. */
  sans: x509.JsonGeneralName[];
  attestation: ModuleAttestation | undefined;
  nameConstraints: { trustDomain: string; dnsNames: string[] } | undefined;
  crlUrl: string | undefined;
  ocspUrl: string | undefined;
  caIssuersUrl: string | undefined;
}

/** Check the inputs against the profile (the rules of this file), decide names, times and serial. Encodes nothing. */
export async function planCertificate(params: IssueParams, spkiInput?: Uint8Array): Promise<CertificatePlan> {
  const profile = getProfile(params.profile);
  const crypto = params.issuer.crypto ?? globalThis.crypto;
  const id = params.identity ?? {};
  const spki = spkiInput ?? new Uint8Array((await toPublicKey(params.publicKey, crypto)).rawData);
  const keyAlg = keyAlgorithmOfSpki(spki);
  if (!profile.allowedKeyAlgorithms.includes(keyAlg)) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `profile ${profile.name} does not allow ${keyAlg} keys`, {
      hint: `allowed: ${profile.allowedKeyAlgorithms.join(", ")}`,
    });
  }

  const issuerCert = params.issuer.certificate;
  if (!issuerCert && profile.name !== "root-ca") {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `profile ${profile.name} needs an issuer certificate (only root-ca is self-signed)`);
  }
  if (issuerCert && !issuerIsCa(issuerCert)) throw new EdgeTrustError("PKI_CHAIN_INVALID", "issuer certificate is not a CA");

  checkSubject(params.subject);
  // The lifetime runs from issuance, not from the backdated notBefore: counted from notBefore, a module certificate
  // at its shortest allowed lifetime (300 s) was already expired when issued (found by the renewal soak).
  const issuedAt = Date.now();
  const notBefore = wholeSeconds(params.notBefore ?? issuedAt - SKEW_MS);
  let notAfter = wholeSeconds((params.notBefore ? notBefore.getTime() : issuedAt) + (params.lifetimeSeconds ?? profile.lifetimeSeconds) * 1000);
  if (issuerCert && notAfter > issuerCert.notAfter) notAfter = wholeSeconds(issuerCert.notAfter);
  if (notAfter <= notBefore) throw new EdgeTrustError("PKI_CHAIN_INVALID", "issuer certificate expires before the new certificate would start");

  const serial = params.serial ?? randomSerial();
  if (!/^[0-9a-fA-F]{2,40}$/.test(serial) || /^0+$/.test(serial)) {
    throw new EdgeTrustError("INVALID_INPUT", "serial must be 1..20 bytes of hex and non-zero");
  }

  const sans: x509.JsonGeneralName[] = [];
  let attestation: ModuleAttestation | undefined;
  let nameConstraints: CertificatePlan["nameConstraints"];
  const r = profile.requires;
  if (r.deviceUri || r.moduleUri || r.nameConstraints) {
    const td = need(id.trustDomain, "a trust domain", profile.name);
    const dev = need(id.deviceId, "a device id", profile.name);
    if (r.moduleUri) {
      const mod = need(id.moduleId, "a module id", profile.name);
      sans.push({ type: "url", value: moduleUri(td, dev, mod) });
      attestation = need(params.attestation, "the attested image digest and manifest version", profile.name);
      checkModuleAttestation(attestation);
      if (issuerCert) {
        // An Edge CA names its device; it may only issue modules of that device (name constraints cannot say so).
        const issuerId = issuerIdentity(issuerCert);
        if (issuerId && (issuerId.deviceId !== dev || issuerId.trustDomain !== td)) {
          throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `Edge CA of device ${issuerId.deviceId} cannot issue a module of device ${dev}`);
        }
      }
    } else {
      sans.push({ type: "url", value: deviceUri(td, dev) });
    }
    if (r.nameConstraints) {
      const dns = need(id.dnsNames, "the device's DNS names", profile.name);
      if (dns.length === 0) throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `profile ${profile.name} needs at least one DNS name`);
      checkTrustDomain(td);
      dns.forEach(checkDnsName);
      nameConstraints = { trustDomain: td, dnsNames: dns };
    }
  }
  if (r.hubDnsNames) {
    const names = ["edgehub", "localhost", ...(id.hostName ? [id.hostName] : []), ...(id.dnsNames ?? [])];
    names.forEach(checkDnsName);
    for (const n of [...new Set(names)]) sans.push({ type: "dns", value: n });
  }
  if (params.crlUrl) checkUrl(params.crlUrl, "CRL URL");
  if (params.ocspUrl) checkUrl(params.ocspUrl, "OCSP URL");
  if (params.caIssuersUrl) checkUrl(params.caIssuersUrl, "caIssuers URL");
  return {
    profile, spki, subjectFields: params.subject, issuerCert, notBefore, notAfter, serial, sans, attestation, nameConstraints,
    crlUrl: params.crlUrl || undefined, ocspUrl: params.ocspUrl || undefined, caIssuersUrl: params.caIssuersUrl || undefined,
  };
}

/** The extensions that depend only on the profile, the issuer and the URLs (the same for every certificate of a template). */
export function fixedExtensions(plan: Pick<CertificatePlan, "profile" | "crlUrl" | "ocspUrl" | "caIssuersUrl">, akiKeyId: string): {
  head: x509.Extension[]; aki: x509.Extension; tail: x509.Extension[];
} {
  const { profile } = plan;
  const head: x509.Extension[] = [
    new x509.BasicConstraintsExtension(profile.ca, profile.ca ? profile.pathLength : undefined, true),
    new x509.KeyUsagesExtension(profile.keyUsage, true),
  ];
  if (profile.extendedKeyUsage.length > 0) head.push(new x509.ExtendedKeyUsageExtension(profile.extendedKeyUsage, false));
  const tail: x509.Extension[] = [];
  if (plan.crlUrl) tail.push(new x509.CRLDistributionPointsExtension([plan.crlUrl], false));
  if (plan.ocspUrl || plan.caIssuersUrl) {
    tail.push(new x509.AuthorityInfoAccessExtension({
      ...(plan.ocspUrl ? { ocsp: [plan.ocspUrl] } : {}),
      ...(plan.caIssuersUrl ? { caIssuers: [plan.caIssuersUrl] } : {}),
    }, false));
  }
  return { head, aki: new x509.AuthorityKeyIdentifierExtension(akiKeyId, false), tail };
}

/** The AKI key id of certificates signed by this issuer: its SKI (or, lacking one, the hash of its key). */
export async function authorityKeyId(issuerCert: x509.X509Certificate | undefined, ownSkiHex: string, crypto: Crypto): Promise<string> {
  if (!issuerCert) return ownSkiHex;
  return issuerCert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ?? Buffer.from(await issuerCert.publicKey.getKeyIdentifier(crypto)).toString("hex");
}

/** The subject DN (the slow way the factory caches). */
export function subjectName(s: SubjectFields): x509.Name {
  return buildName(s);
}

/**
 * The reference issuance: every certificate built field by field with @peculiar/x509's generator. The factory
 * (`issue.ts`) must produce the same bytes (`factory.test.ts` checks every profile); root certificates use this path.
 */
export async function issueCertificateReference(params: IssueParams): Promise<x509.X509Certificate> {
  const crypto = params.issuer.crypto ?? globalThis.crypto;
  const plan = await planCertificate(params);
  const pub = new x509.PublicKey(new Uint8Array(plan.spki));
  const ski = await x509.SubjectKeyIdentifierExtension.create(pub, false, crypto);
  const fixed = fixedExtensions(plan, await authorityKeyId(plan.issuerCert, ski.keyId, crypto));
  const extensions: x509.Extension[] = [...fixed.head, ski, fixed.aki];
  if (plan.attestation) extensions.push(moduleAttestationExtension(plan.attestation));
  if (plan.nameConstraints) extensions.push(nameConstraintsExtension(plan.nameConstraints.trustDomain, plan.nameConstraints.dnsNames));
  if (plan.sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(plan.sans, false));
  extensions.push(...fixed.tail);
  const subject = buildName(plan.subjectFields);
  return x509.X509CertificateGenerator.create({
    serialNumber: plan.serial,
    subject,
    issuer: plan.issuerCert ? plan.issuerCert.subjectName : subject,
    notBefore: plan.notBefore,
    notAfter: plan.notAfter,
    publicKey: pub,
    signingKey: params.issuer.signingKey,
    signingAlgorithm: signingAlgorithmFor(params.issuer.signingKey),
    extensions,
  }, crypto);
}

/** Is this certificate a CA (basicConstraints CA:TRUE)? Remembered per certificate object (issuers are reused). */
function issuerIsCa(cert: x509.X509Certificate): boolean {
  let v = caFlags.get(cert);
  if (v === undefined) {
    v = Boolean(cert.getExtension(x509.BasicConstraintsExtension)?.ca);
    caFlags.set(cert, v);
  }
  return v;
}
const caFlags = new WeakMap<x509.X509Certificate, boolean>();

function issuerIdentity(cert: x509.X509Certificate): ReturnType<typeof certificateIdentity> | undefined {
  if (issuerIds.has(cert)) return issuerIds.get(cert);
  const id = tryIdentity(cert);
  issuerIds.set(cert, id);
  return id;
}
const issuerIds = new WeakMap<x509.X509Certificate, ReturnType<typeof certificateIdentity> | undefined>();

function tryIdentity(cert: x509.X509Certificate): ReturnType<typeof certificateIdentity> | undefined {
  try {
    return certificateIdentity(cert);
  } catch {
    return undefined;
  }
}

/**
 * Verifiers' URI-path check (name constraints confine only the host): a module certificate's device must be the
 * device named by the Edge CA that issued it. Throws PKI_CHAIN_INVALID otherwise.
 */
export function checkModuleDevice(moduleCert: x509.X509Certificate, edgeCa: x509.X509Certificate): void {
  const m = certificateIdentity(moduleCert);
  const ca = certificateIdentity(edgeCa);
  if (m.moduleId === undefined) throw new EdgeTrustError("PKI_CHAIN_INVALID", "certificate is not a module certificate");
  if (m.trustDomain !== ca.trustDomain || m.deviceId !== ca.deviceId) {
    throw new EdgeTrustError("PKI_CHAIN_INVALID", `module of device ${m.deviceId} was issued by the Edge CA of device ${ca.deviceId}`);
  }
}
