import "reflect-metadata";
import { randomBytes } from "node:crypto";
import { AsnConvert } from "@peculiar/asn1-schema";
import { GeneralName as AsnGeneralName, GeneralSubtree, GeneralSubtrees, NameConstraints, id_ce_nameConstraints } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";
import { moduleAttestationExtension, type ModuleAttestation } from "./attestation.js";
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

/** 16 random bytes, top bit clear (positive INTEGER, no 0x00 pad) and a non-zero first byte (full 16 octets). */
export function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f || 0x01;
  return b.toString("hex");
}

function buildName(s: SubjectFields): x509.Name {
  if (!s.commonName || s.commonName.length > 64) throw new EdgeTrustError("INVALID_INPUT", "subject commonName must be 1..64 characters");
  const rdns: Record<string, string[]>[] = [];
  if (s.country !== undefined) {
    if (!/^[A-Z]{2}$/.test(s.country)) throw new EdgeTrustError("INVALID_INPUT", `country must be two capital letters, got ${JSON.stringify(s.country)}`);
    rdns.push({ C: [s.country] });
  }
  if (s.organization !== undefined) rdns.push({ O: [s.organization] });
  if (s.organizationalUnit !== undefined) rdns.push({ OU: [s.organizationalUnit] });
  rdns.push({ CN: [s.commonName] });
  return new x509.Name(rdns);
}

function need<T>(v: T | undefined, what: string, profile: string): T {
  if (v === undefined || v === "") throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `profile ${profile} needs ${what}`);
  return v;
}

function nameConstraintsExtension(trustDomain: string, dnsNames: string[]): x509.Extension {
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

function checkUrl(u: string, what: string): void {
  let p: URL;
  try {
    p = new URL(u);
  } catch {
    throw new EdgeTrustError("INVALID_INPUT", `${what} ${JSON.stringify(u)} is not a URL`);
  }
  if (p.protocol !== "http:" && p.protocol !== "https:") throw new EdgeTrustError("INVALID_INPUT", `${what} must be http(s)`);
}

/**
 * Issue a certificate under a profile. The subject, SANs and extensions come from the profile and the caller's
 * record; nothing is copied from a CSR. Always sets SKI and AKI; CRL DP and OCSP/caIssuers AIA when given.
 */
export async function issueCertificate(params: IssueParams): Promise<x509.X509Certificate> {
  const profile = getProfile(params.profile);
  const crypto = params.issuer.crypto ?? globalThis.crypto;
  const id = params.identity ?? {};
  const pub = await toPublicKey(params.publicKey, crypto);
  const keyAlg = keyAlgorithmOfSpki(pub.rawData);
  if (!profile.allowedKeyAlgorithms.includes(keyAlg)) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `profile ${profile.name} does not allow ${keyAlg} keys`, {
      hint: `allowed: ${profile.allowedKeyAlgorithms.join(", ")}`,
    });
  }

  const issuerCert = params.issuer.certificate;
  if (!issuerCert && profile.name !== "root-ca") {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `profile ${profile.name} needs an issuer certificate (only root-ca is self-signed)`);
  }
  if (issuerCert) {
    const bc = issuerCert.getExtension(x509.BasicConstraintsExtension);
    if (!bc?.ca) throw new EdgeTrustError("PKI_CHAIN_INVALID", "issuer certificate is not a CA");
  }

  const subject = buildName(params.subject);
  const notBefore = wholeSeconds(params.notBefore ?? Date.now() - SKEW_MS);
  let notAfter = wholeSeconds(notBefore.getTime() + (params.lifetimeSeconds ?? profile.lifetimeSeconds) * 1000);
  if (issuerCert && notAfter > issuerCert.notAfter) notAfter = wholeSeconds(issuerCert.notAfter);
  if (notAfter <= notBefore) throw new EdgeTrustError("PKI_CHAIN_INVALID", "issuer certificate expires before the new certificate would start");

  const serial = params.serial ?? randomSerial();
  if (!/^[0-9a-fA-F]{2,40}$/.test(serial) || /^0+$/.test(serial)) {
    throw new EdgeTrustError("INVALID_INPUT", "serial must be 1..20 bytes of hex and non-zero");
  }

  const extensions: x509.Extension[] = [];
  extensions.push(new x509.BasicConstraintsExtension(profile.ca, profile.ca ? profile.pathLength : undefined, true));
  extensions.push(new x509.KeyUsagesExtension(profile.keyUsage, true));
  if (profile.extendedKeyUsage.length > 0) extensions.push(new x509.ExtendedKeyUsageExtension(profile.extendedKeyUsage, false));

  const ski = await x509.SubjectKeyIdentifierExtension.create(pub, false, crypto);
  extensions.push(ski);
  const issuerSki = issuerCert?.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  const akiId = issuerCert ? issuerSki ?? Buffer.from(await issuerCert.publicKey.getKeyIdentifier(crypto)).toString("hex") : ski.keyId;
  extensions.push(new x509.AuthorityKeyIdentifierExtension(akiId, false));

  const sans: x509.JsonGeneralName[] = [];
  const r = profile.requires;
  if (r.deviceUri || r.moduleUri || r.nameConstraints) {
    const td = need(id.trustDomain, "a trust domain", profile.name);
    const dev = need(id.deviceId, "a device id", profile.name);
    if (r.moduleUri) {
      const mod = need(id.moduleId, "a module id", profile.name);
      sans.push({ type: "url", value: moduleUri(td, dev, mod) });
      extensions.push(moduleAttestationExtension(need(params.attestation, "the attested image digest and manifest version", profile.name)));
      if (issuerCert) {
        // An Edge CA names its device; it may only issue modules of that device (name constraints cannot say so).
        const issuerId = tryIdentity(issuerCert);
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
      extensions.push(nameConstraintsExtension(td, dns));
    }
  }
  if (r.hubDnsNames) {
    const names = ["edgehub", "localhost", ...(id.hostName ? [id.hostName] : []), ...(id.dnsNames ?? [])];
    names.forEach(checkDnsName);
    for (const n of [...new Set(names)]) sans.push({ type: "dns", value: n });
  }
  if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sans, false));

  if (params.crlUrl) {
    checkUrl(params.crlUrl, "CRL URL");
    extensions.push(new x509.CRLDistributionPointsExtension([params.crlUrl], false));
  }
  if (params.ocspUrl || params.caIssuersUrl) {
    if (params.ocspUrl) checkUrl(params.ocspUrl, "OCSP URL");
    if (params.caIssuersUrl) checkUrl(params.caIssuersUrl, "caIssuers URL");
    extensions.push(new x509.AuthorityInfoAccessExtension({
      ...(params.ocspUrl ? { ocsp: [params.ocspUrl] } : {}),
      ...(params.caIssuersUrl ? { caIssuers: [params.caIssuersUrl] } : {}),
    }, false));
  }

  return x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject,
    issuer: issuerCert ? issuerCert.subjectName : subject,
    notBefore,
    notAfter,
    publicKey: pub,
    signingKey: params.issuer.signingKey,
    signingAlgorithm: signingAlgorithmFor(params.issuer.signingKey),
    extensions,
  }, crypto);
}

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
