import "reflect-metadata";
import { createHash } from "node:crypto";
import { AsnConvert } from "@peculiar/asn1-schema";
import { Certificate as AsnCertificate, CRLNumber, id_ce_cRLNumber } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError, createLogger, isEdgeTrustError, type Logger } from "../common/index.js";
import { keyStoreCrypto, keyStoreCryptoKey, type KeyAlgorithm, type KeyStore } from "../hsm/index.js";
import { issueCertificateDer, getProfile, signingAlgorithmFor, wholeSeconds, type Profile, type ProfileName, type VerifiedCsr } from "../pki/index.js";
import { checkCsr, sanKey } from "./csr.js";
import { announce } from "./shared/events.js";
import { releaseRenewal, successorOf } from "./shared/renewal.js";
import { normalizeSerial, REVOCATION_REASON_CODES, sha256Hex, type CaRecord, type CaStore, type CertificateRecord, type RevocationReason } from "./store.js";

/** Profiles the cloud CA issues (module certificates are issued on the device by its Edge CA). */
export const CA_PROFILES = ["device-identity", "edge-ca", "edge-hub-server", "leaf-device"] as const;
export type CaProfileName = (typeof CA_PROFILES)[number];

/** Per-profile overrides (from the policy file's `certificates:` section, or the caller). */
export interface ProfileOverride {
  lifetimeSeconds?: number;
  allowedKeyAlgorithms?: KeyAlgorithm[];
  /** Renew when this % of the lifetime has passed (reported to devices). */
  renewAtPercent?: number;
}
export type ProfileOverrides = Partial<Record<ProfileName, ProfileOverride>>;

/** policy `certificates:` kind → profile name. */
const POLICY_CERT_KINDS: Record<string, ProfileName> = {
  device: "device-identity", edgeCa: "edge-ca", module: "module", hub: "edge-hub-server", leaf: "leaf-device",
};

/** `30d`, `12h`, `90m` → seconds. */
function durationSeconds(d: string): number {
  const m = /^([1-9][0-9]*)(m|h|d)$/.exec(d);
  if (!m) throw new EdgeTrustError("INVALID_INPUT", `duration ${JSON.stringify(d)} must be <n>m, <n>h or <n>d`);
  return Number(m[1]) * (m[2] === "m" ? 60 : m[2] === "h" ? 3600 : 86400);
}

/** Convert a policy file's `certificates` section into profile overrides. */
export function overridesFromPolicy(certificates: Record<string, { lifetime: string; renewAt: number; keyTypes: KeyAlgorithm[] } | undefined> | undefined): ProfileOverrides {
  const out: ProfileOverrides = {};
  for (const [kind, c] of Object.entries(certificates ?? {})) {
    const name = POLICY_CERT_KINDS[kind];
    if (!name || !c) continue;
    out[name] = { lifetimeSeconds: durationSeconds(c.lifetime), allowedKeyAlgorithms: [...c.keyTypes], renewAtPercent: c.renewAt };
  }
  return out;
}

function resolveProfile(name: ProfileName, overrides: ProfileOverrides = {}): Profile {
  const base = getProfile(name);
  const o = overrides[name];
  if (!o) return base;
  return {
    ...base,
    ...(o.lifetimeSeconds !== undefined ? { lifetimeSeconds: o.lifetimeSeconds } : {}),
    ...(o.allowedKeyAlgorithms !== undefined ? { allowedKeyAlgorithms: [...o.allowedKeyAlgorithms] } : {}),
  };
}

interface CaOptions {
  trustDomain: string;
  /** Base URL for CRL DP and OCSP AIA (e.g. http://127.0.0.1:8080). */
  publicBaseUrl: string;
  crlValidityHours?: number;
  ocspValidityMinutes?: number;
  renewAfterExpiryDays?: number;
  profiles?: ProfileOverrides;
  logger?: Logger;
}

/** An issuing CA ready to sign: its record, parsed certificate and KeyStore-backed signing key. */
export interface LoadedCa {
  record: CaRecord;
  cert: x509.X509Certificate;
  key: CryptoKey;
  /** OCSP CertID hashes of this CA (issuerNameHash / issuerKeyHash) for SHA-1 and SHA-256, hex. */
  certIdHashes: { "SHA-1": { name: string; key: string }; "SHA-256": { name: string; key: string } };
  /** SHA-1 of the public key bits (OCSP ResponderID byKey). */
  keyHashSha1: Buffer;
  /** The certificate, PEM (second in every chain this CA returns). */
  pem: string;
}

interface IssueRequest {
  csrPem: string;
  profile: CaProfileName;
  /** The enrollment record the subject and SANs come from. */
  deviceId: string;
  /** edge-hub-server: the device's host name (must be one of the record's DNS names). */
  hostName?: string;
  /** Renewal: the serial this certificate replaces. */
  replacesSerial?: string;
  /** A shorter lifetime than the profile's (an enrollment's own lifetime); never lengthens it. */
  lifetimeSeconds?: number;
  /** `verifyCsr` of exactly `csrPem`, when the caller already ran it (registration): not verified twice; SANs still checked. */
  verifiedCsr?: VerifiedCsr;
}

export interface Issued {
  record: CertificateRecord;
  certificate: x509.X509Certificate;
  /** Leaf first, then the issuing CA (the root is the trust anchor, served by /v1/cas). */
  chainPem: string;
}

/** A stored serial (hex, leading zero nibble dropped) as @peculiar/x509 takes a CRL entry's serial: whole bytes. */
const crlSerial = (serial: string): string => (serial.length % 2 ? `0${serial}` : serial);

function hashHex(alg: "sha1" | "sha256", data: ArrayBuffer | Uint8Array): string {
  return createHash(alg).update(data instanceof ArrayBuffer ? new Uint8Array(data) : data).digest("hex");
}

function certIdHashesOf(cert: x509.X509Certificate): LoadedCa["certIdHashes"] {
  const asn = AsnConvert.parse(cert.rawData, AsnCertificate);
  const nameDer = AsnConvert.serialize(asn.tbsCertificate.subject);
  const keyBits = asn.tbsCertificate.subjectPublicKeyInfo.subjectPublicKey;
  return {
    "SHA-1": { name: hashHex("sha1", nameDer), key: hashHex("sha1", keyBits) },
    "SHA-256": { name: hashHex("sha256", nameDer), key: hashHex("sha256", keyBits) },
  };
}

/**
 * The CA engine: issuance under profiles from enrollment records, revocation with CRL regeneration, the trust
 * bundle, and rollover-aware issuer lookup. HTTP, CLI and the later enrollment API all go through this.
 */
export class CertificateAuthority {
  readonly crypto: Crypto;
  readonly log: Logger;
  private cas = new Map<string, LoadedCa>();
  private roots: x509.X509Certificate[] = [];
  private rootIds = new Set<string>();

  private constructor(readonly store: CaStore, readonly keys: KeyStore, readonly options: CaOptions) {
    this.crypto = keyStoreCrypto();
    this.log = options.logger ?? createLogger("ca-service");
  }

  static async load(store: CaStore, keys: KeyStore, options: CaOptions): Promise<CertificateAuthority> {
    const ca = new CertificateAuthority(store, keys, options);
    await ca.reload();
    if (ca.cas.size === 0) throw new EdgeTrustError("UNAVAILABLE", "no issuing CA in the store", { hint: "run `edgetrust ca init` first" });
    return ca;
  }

  /** Re-read CAs from the store (after a rollover by another process). */
  async reload(): Promise<void> {
    const all = await this.store.listCas();
    this.roots = all.filter((c) => c.kind === "root").map((c) => new x509.X509Certificate(c.certPem));
    this.rootIds = new Set(all.filter((c) => c.kind === "root").map((c) => c.id));
    const next = new Map<string, LoadedCa>();
    for (const rec of all.filter((c) => c.kind === "issuing")) {
      const existing = this.cas.get(rec.id);
      if (existing) { next.set(rec.id, { ...existing, record: rec }); continue; }
      const cert = new x509.X509Certificate(rec.certPem);
      const key = await keyStoreCryptoKey(this.keys, { label: rec.keyLabel });
      const asn = AsnConvert.parse(cert.rawData, AsnCertificate);
      next.set(rec.id, {
        record: rec, cert, key, certIdHashes: certIdHashesOf(cert), pem: cert.toString("pem") + "\n",
        keyHashSha1: createHash("sha1").update(new Uint8Array(asn.tbsCertificate.subjectPublicKeyInfo.subjectPublicKey)).digest(),
      });
    }
    this.cas = next;
  }

  /** Every issuing CA (active and retired): CRLs and OCSP keep working for both during a rollover. */
  issuers(): LoadedCa[] {
    return [...this.cas.values()];
  }

  issuer(id: string): LoadedCa | undefined {
    return this.cas.get(id);
  }

  /** The CA new certificates are issued by: the newest active issuing CA that is currently valid. */
  current(): LoadedCa {
    const now = Date.now();
    const active = this.issuers()
      .filter((c) => c.record.status === "active" && c.cert.notBefore.getTime() <= now && c.cert.notAfter.getTime() > now)
      .sort((a, b) => b.cert.notBefore.getTime() - a.cert.notBefore.getTime() || b.record.createdAt.localeCompare(a.record.createdAt));
    const c = active[0];
    if (!c) throw new EdgeTrustError("UNAVAILABLE", "no active, valid issuing CA", { hint: "add one with `edgetrust ca rollover`" });
    return c;
  }

  rootCertificates(): x509.X509Certificate[] {
    return [...this.roots];
  }

  /** Roots and every issuing CA, PEM: what devices trust and chain through across a rollover. */
  trustBundlePem(): string {
    return [...this.roots, ...this.issuers().map((c) => c.cert)].map((c) => c.toString("pem")).join("\n") + "\n";
  }

  crlUrl(issuerId: string): string {
    return `${this.options.publicBaseUrl.replace(/\/$/, "")}/v1/crl/${issuerId}.crl`;
  }

  ocspUrl(): string {
    return `${this.options.publicBaseUrl.replace(/\/$/, "")}/v1/ocsp`;
  }

  profile(name: ProfileName): Profile {
    return resolveProfile(name, this.options.profiles);
  }

  /**
   * Issue from a PKCS#10 request. The enrollment record (and the profile) decide subject and SANs; the CSR only
   * contributes its public key, after its signature, key type, extensions and SANs pass `checkCsr`.
   */
  async issue(req: IssueRequest, actor: string, action = "cert.issue"): Promise<Issued> {
    if (!(CA_PROFILES as readonly string[]).includes(req.profile)) {
      throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `the cloud CA does not issue profile ${req.profile}`, { hint: `one of ${CA_PROFILES.join(", ")}` });
    }
    const enr = await this.store.getEnrollment(req.deviceId);
    if (!enr) throw new EdgeTrustError("NOT_FOUND", `no enrollment record for device ${req.deviceId}`, { hint: "create the enrollment first" });
    if (enr.status !== "enabled") throw new EdgeTrustError("FORBIDDEN", `enrollment of ${req.deviceId} is disabled`);
    if ((req.profile === "leaf-device") !== (enr.kind === "leaf")) {
      throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `profile ${req.profile} does not fit a ${enr.kind} enrollment`);
    }
    const base = this.profile(req.profile);
    const profile = req.lifetimeSeconds !== undefined && req.lifetimeSeconds > 0 ? { ...base, lifetimeSeconds: Math.min(base.lifetimeSeconds, req.lifetimeSeconds) } : base;
    const td = this.options.trustDomain;
    const uri = `edgetrust://${td}/devices/${enr.deviceId}`;
    let identity: { trustDomain: string; deviceId: string; dnsNames?: string[]; hostName?: string };
    let allowedSans: string[];
    let commonName = enr.commonName;
    switch (req.profile) {
      case "device-identity":
      case "leaf-device":
        identity = { trustDomain: td, deviceId: enr.deviceId };
        allowedSans = [`uri:${uri}`];
        break;
      case "edge-ca":
        if (enr.dnsNames.length === 0) throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `enrollment of ${enr.deviceId} has no DNS names for the Edge CA's name constraints`);
        identity = { trustDomain: td, deviceId: enr.deviceId, dnsNames: enr.dnsNames };
        allowedSans = [`uri:${uri}`];
        commonName = `${enr.commonName} Edge CA`.slice(0, 64);
        break;
      case "edge-hub-server": {
        if (req.hostName !== undefined && !enr.dnsNames.includes(req.hostName.toLowerCase())) {
          throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `host name ${req.hostName} is not one of the device's names`);
        }
        identity = { trustDomain: td, deviceId: enr.deviceId, dnsNames: enr.dnsNames, ...(req.hostName ? { hostName: req.hostName.toLowerCase() } : {}) };
        allowedSans = ["edgehub", "localhost", ...enr.dnsNames].map((d) => `dns:${d}`);
        break;
      }
    }
    const checked = await checkCsr(req.csrPem, { allowedKeyAlgorithms: profile.allowedKeyAlgorithms, allowedSans }, req.verifiedCsr);
    for (let attempt = 0; ; attempt++) {
      const ca = this.current();
      const cert = await issueCertificateDer({
        profile,
        subject: { commonName },
        identity,
        publicKey: new Uint8Array(checked.spki),
        issuer: { certificate: ca.cert, signingKey: ca.key, crypto: this.crypto },
        crlUrl: this.crlUrl(ca.record.id),
        ocspUrl: this.ocspUrl(),
      });
      try {
        const certPem = cert.pem();
        const record = await this.store.recordIssued({
          serial: normalizeSerial(cert.serial), issuerId: ca.record.id, profile: profile.name, subject: cert.subject,
          sans: cert.sans.map((n) => sanKey(n)), deviceId: enr.deviceId, spkiSha256: sha256Hex(new Uint8Array(checked.spki)),
          fingerprintSha256: cert.fingerprintSha256, notBefore: cert.notBefore.toISOString(), notAfter: cert.notAfter.toISOString(),
          certPem, replacesSerial: req.replacesSerial ? normalizeSerial(req.replacesSerial) : null,
        }, actor, action);
        return { record, get certificate() { return cert.certificate(); }, chainPem: `${certPem}\n${ca.pem}` };
      } catch (e) {
        // A 128-bit random serial collision is practically impossible; still, never record two certs under one serial.
        if (isEdgeTrustError(e, "CONFLICT") && attempt < 3) continue;
        throw e;
      }
    }
  }

  /**
   * Renew (or rekey) from the certificate the device holds now. The caller has proved possession of that
   * certificate's key (mTLS handshake). It must be one we issued (exact DER match), not revoked, and not expired
   * longer ago than the renewal-after-expiry window. The new certificate keeps the profile and identity; a new key
   * in the CSR is a rekey.
   */
  async renew(currentDer: Uint8Array, csrPem: string, hostName?: string): Promise<Issued & { rekey: boolean }> {
    const cur = new x509.X509Certificate(new Uint8Array(currentDer));
    const rec = await this.store.getCertificate(normalizeSerial(cur.serialNumber));
    if (!rec || rec.fingerprintSha256 !== sha256Hex(currentDer)) throw new EdgeTrustError("UNAUTHENTICATED", "the client certificate was not issued by this CA");
    if (rec.status === "revoked") throw new EdgeTrustError("FORBIDDEN", `certificate ${rec.serial} is revoked (${rec.revocationReason ?? "unspecified"})`);
    if (!this.cas.has(rec.issuerId)) throw new EdgeTrustError("UNAUTHENTICATED", "the client certificate's issuer is unknown");
    const windowMs = (this.options.renewAfterExpiryDays ?? 30) * 86400e3;
    const now = Date.now();
    if (Date.parse(rec.notBefore) > now) throw new EdgeTrustError("FORBIDDEN", "the client certificate is not yet valid");
    if (Date.parse(rec.notAfter) + windowMs < now) {
      throw new EdgeTrustError("FORBIDDEN", `the client certificate expired on ${rec.notAfter}, beyond the ${this.options.renewAfterExpiryDays ?? 30}-day renewal window`, { hint: "re-enroll the device" });
    }
    if (!rec.deviceId || !(CA_PROFILES as readonly string[]).includes(rec.profile)) throw new EdgeTrustError("FORBIDDEN", `certificates of profile ${rec.profile} cannot renew here`);
    const csr = await checkCsr(csrPem, { allowedKeyAlgorithms: this.profile(rec.profile as ProfileName).allowedKeyAlgorithms, allowedSans: rec.sans });
    const rekey = sha256Hex(new Uint8Array(csr.spki)) !== rec.spkiSha256;
    // Renewal is idempotent per (certificate, key): a device retrying a renewal whose answer it lost gets the
    // successor already issued instead of a second certificate.
    const prior = await successorOf(this.store, rec.serial, sha256Hex(new Uint8Array(csr.spki)));
    const priorCa = prior ? this.cas.get(prior.issuerId) : undefined;
    if (prior && priorCa) {
      const certificate = new x509.X509Certificate(prior.certPem);
      return { record: prior, certificate, chainPem: [certificate, priorCa.cert].map((c) => c.toString("pem")).join("\n") + "\n", rekey };
    }
    let issued: Issued;
    try {
      issued = await this.issue({ csrPem, profile: rec.profile as CaProfileName, deviceId: rec.deviceId, replacesSerial: rec.serial, ...(hostName ? { hostName } : {}) }, `device:${rec.deviceId}`, rekey ? "cert.rekey" : "cert.renew");
    } catch (e) {
      await releaseRenewal(this.store, rec.serial, sha256Hex(new Uint8Array(csr.spki)));
      throw e;
    }
    return { ...issued, rekey };
  }

  /**
   * Revoke by serial and publish a fresh CRL for its issuer. Revoking again with the same reason is a retry, answered
   * with the revoked record: the revocation commits before the CRL is signed, so a request can fail after it (the
   * store unreachable for the CRL transaction: 503 with Retry-After; the answer lost with a process or connection)
   * and a client must be able to repeat it. The retry publishes the CRL when the current one does not list the
   * serial yet — otherwise the revocation would reach CRL consumers (edge hubs) only at the next scheduled CRL.
   * Another reason for a revoked certificate stays a CONFLICT (the first reason stands).
   */
  async revoke(serial: string, reason: RevocationReason, actor: string): Promise<CertificateRecord> {
    const { record, repeated } = await this.store.revoke(serial, reason, actor);
    if (!repeated || !(await this.crlLists(record.issuerId, record.serial))) await this.generateCrl(record.issuerId);
    return record;
  }

  /** Does the issuer's current CRL list `serial`? (An unreadable or missing CRL does not.) */
  private async crlLists(issuerId: string, serial: string): Promise<boolean> {
    const cur = await this.store.currentCrl(issuerId);
    if (!cur) return false;
    try {
      return new x509.X509Crl(new Uint8Array(cur.der)).findRevoked(crlSerial(serial)) !== null;
    } catch {
      return false;
    }
  }

  /** Build, sign and store the next CRL of an issuer (CRL number strictly increasing across processes). */
  async generateCrl(issuerId: string): Promise<{ crlNumber: number; der: Buffer }> {
    const ca = this.cas.get(issuerId);
    if (!ca) throw new EdgeTrustError("NOT_FOUND", `no issuing CA ${issuerId}`);
    const hours = this.options.crlValidityHours ?? 24;
    const next = await this.store.nextCrl(issuerId, async (crlNumber, tx) => {
      const revoked = await this.store.revokedBy(issuerId, tx);
      const thisUpdate = wholeSeconds(Date.now());
      const nextUpdate = new Date(thisUpdate.getTime() + hours * 3600e3);
      const ski = ca.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
      const crl = await x509.X509CrlGenerator.create({
        issuer: ca.cert.subjectName,
        thisUpdate,
        nextUpdate,
        entries: revoked.map((r) => ({
          serialNumber: crlSerial(r.serial),
          revocationDate: wholeSeconds(r.revokedAt),
          reason: REVOCATION_REASON_CODES[r.reason] as x509.X509CrlReason,
        })),
        extensions: [
          new x509.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(crlNumber))),
          ...(ski ? [new x509.AuthorityKeyIdentifierExtension(ski, false)] : []),
        ],
        signingKey: ca.key,
        signingAlgorithm: signingAlgorithmFor(ca.key),
      }, this.crypto);
      return { der: new Uint8Array(crl.rawData), thisUpdate, nextUpdate };
    });
    await announce(this.store.db, { kind: "crl", issuerId, crlNumber: next.crlNumber });
    return next;
  }

  /**
   * The current CRL (an issuing CA's is regenerated when missing or within 10% of its nextUpdate). A root's CRL is
   * served as signed at the last ceremony (init/rollover): the root key is offline, never used here.
   */
  async crl(issuerId: string): Promise<Buffer> {
    if (this.rootIds.has(issuerId)) {
      const root = await this.store.currentCrl(issuerId);
      if (!root) throw new EdgeTrustError("NOT_FOUND", `root CA ${issuerId} has no CRL`, { hint: "sign one with `edgetrust ca rollover` on the root's machine" });
      if (root.nextUpdate.getTime() < Date.now()) this.log.warn({ root: issuerId, nextUpdate: root.nextUpdate.toISOString() }, "the root CRL is past its nextUpdate: re-sign it with the root key");
      return root.der;
    }
    if (!this.cas.has(issuerId)) throw new EdgeTrustError("NOT_FOUND", `no issuing CA ${issuerId}`);
    const cur = await this.store.currentCrl(issuerId);
    const margin = (this.options.crlValidityHours ?? 24) * 360e3;
    if (cur && cur.nextUpdate.getTime() - margin > Date.now()) return cur.der;
    return (await this.generateCrl(issuerId)).der;
  }
}
