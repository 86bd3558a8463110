import "reflect-metadata";

import { EdgeTrustError } from "../common/index.js";
import type { KeyAlgorithm } from "../hsm/index.js";
import { refuseExtraSans, verifyCsr, type VerifiedCsr } from "../pki/index.js";

interface CsrCheck {
  /** Key algorithms the profile allows (after policy overrides). */
  allowedKeyAlgorithms: readonly KeyAlgorithm[];
  /** The SANs the CA will put in the certificate (`dns:name`, `uri:...`); a CSR may ask for a subset, never more. */
  allowedSans: readonly string[];
}

type CheckedCsr = Omit<VerifiedCsr, "spki"> & { spki: ArrayBuffer };

/** `dns:edgehub`, `uri:edgetrust://...`: how SANs are recorded and compared. */
export function sanKey(n: { type: string; value: string }): string {
  return `${n.type === "url" ? "uri" : n.type}:${n.type === "dns" ? n.value.toLowerCase() : n.value}`;
}

/**
 * The CA's checks on a PKCS#10 request (pki/ `verifyCsr` + the record's SANs): it parses, its signature verifies with
 * its own key (proof of possession), the key type and size are allowed, it does not ask for CA:TRUE, it carries no
 * critical extension the CA does not understand, and every SAN it asks for is one the enrollment record grants. The
 * CSR's subject and SANs are never copied: the caller builds them from the record and the profile.
 */
export async function checkCsr(pem: string, rules: CsrCheck, verified?: VerifiedCsr): Promise<CheckedCsr> {
  if (pem.length > 32768) throw new EdgeTrustError("PKI_INVALID_CSR", "the CSR is too large");
  // A request the caller already verified (registration matches its key to the enrolled one first) is not verified
  // twice; one verified for a key type this profile refuses goes through verifyCsr again, which refuses it.
  const v = verified && rules.allowedKeyAlgorithms.includes(verified.keyAlgorithm) ? verified : await verifyCsr(pem, { allowedKeyAlgorithms: [...rules.allowedKeyAlgorithms] });
  const allowed = { dns: [] as string[], uri: [] as string[], ip: [] as string[], email: [] as string[] };
  for (const s of rules.allowedSans) {
    const i = s.indexOf(":");
    const kind = s.slice(0, i);
    if (kind === "dns" || kind === "uri" || kind === "ip" || kind === "email") allowed[kind].push(s.slice(i + 1));
  }
  refuseExtraSans({ ...v.sans, dns: v.sans.dns.map((d) => d.toLowerCase()) }, allowed);
  return Object.assign(v, { spki: v.spki.slice().buffer });
}

