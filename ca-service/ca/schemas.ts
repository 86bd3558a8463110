import { Type, type Static } from "@sinclair/typebox";
import { CA_PROFILES } from "../ca.js";
import { REVOCATION_REASONS, type CertificateRecord } from "../store.js";

/** The CA feature's wire schemas (certificates: issue, read, revoke, renew). */

export const Serial = Type.String({ pattern: "^(0x)?[0-9a-fA-F:]{1,80}$", description: "certificate serial, hex" });
export const ProfileSchema = Type.Union(CA_PROFILES.map((p) => Type.Literal(p)), { description: "certificate profile" });
export const ReasonSchema = Type.Union(REVOCATION_REASONS.map((r) => Type.Literal(r)), { description: "RFC 5280 CRLReason" });

export const CertificateView = Type.Object({
  serial: Type.String(),
  issuerId: Type.String(),
  profile: Type.String(),
  subject: Type.String(),
  sans: Type.Array(Type.String()),
  deviceId: Type.Union([Type.String(), Type.Null()]),
  notBefore: Type.String(),
  notAfter: Type.String(),
  status: Type.Union([Type.Literal("good"), Type.Literal("revoked")]),
  revokedAt: Type.Union([Type.String(), Type.Null()]),
  revocationReason: Type.Union([Type.String(), Type.Null()]),
  replacesSerial: Type.Union([Type.String(), Type.Null()]),
  fingerprintSha256: Type.String(),
  certificatePem: Type.String(),
});
export type CertificateView = Static<typeof CertificateView>;

export function certificateView(r: CertificateRecord): CertificateView {
  return {
    serial: r.serial, issuerId: r.issuerId, profile: r.profile, subject: r.subject, sans: r.sans, deviceId: r.deviceId,
    notBefore: r.notBefore, notAfter: r.notAfter, status: r.status, revokedAt: r.revokedAt, revocationReason: r.revocationReason,
    replacesSerial: r.replacesSerial, fingerprintSha256: r.fingerprintSha256, certificatePem: r.certPem,
  };
}

export const IssuedView = Type.Object({
  serial: Type.String(),
  profile: Type.String(),
  notAfter: Type.String(),
  certificatePem: Type.String(),
  chainPem: Type.String({ description: "leaf then issuing CA" }),
  issuerId: Type.String(),
});
