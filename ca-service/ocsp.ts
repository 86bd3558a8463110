import "reflect-metadata";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import {
  BasicOCSPResponse, CertStatus, KeyHash, OCSPRequest, OCSPResponse, OCSPResponseStatus, ResponderID, ResponseBytes,
  ResponseData, RevokedInfo, SingleResponse, id_pkix_ocsp_basic, id_pkix_ocsp_nonce, type CertID,
} from "@peculiar/asn1-ocsp";
import { CRLReason, type AlgorithmIdentifier, type Extension as AsnExtension } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { signingAlgorithmFor, wholeSeconds } from "../pki/index.js";
import type { CertificateAuthority, LoadedCa } from "./ca.js";
import { normalizeSerial, REVOCATION_REASON_CODES } from "./store.js";

/**
 * RFC 6960 OCSP responder. The issuing CA signs its own responses (no delegated responder certificate), so a relying
 * party needs nothing beyond the chain it already has. Requests may use SHA-1 or SHA-256 CertIDs. The nonce follows
 * RFC 9654 (which obsoletes RFC 8954): see `requestNonce`. Every time is whole seconds (RFC 5280 §4.1.2.5.2 forbids
 * fractional GeneralizedTime; GnuTLS refuses it). Everything is built with @peculiar/asn1-ocsp — no hand-written ASN.1.
 */

/** RFC 9654 §2.1: Nonce ::= OCTET STRING (SIZE(1..128)). */
const OCSP_NONCE_MAX = 128;

/**
 * The request's nonce extension per RFC 9654 §2.1: extnValue is the DER encoding of `Nonce ::= OCTET STRING
 * (SIZE(1..128))`. A nonce of 0 octets, of more than 128, or one whose value is not that OCTET STRING makes the
 * request malformed (the RFC: reject with malformedRequest). Every nonce of 1..128 octets is echoed (the RFC requires
 * 16..32 and allows echoing the rest); "none" when the request has no nonce.
 */
function requestNonce(req: OCSPRequest): AsnExtension | "none" | "malformed" {
  const all = req.tbsRequest.requestExtensions?.filter((e: AsnExtension) => e.extnID === id_pkix_ocsp_nonce) ?? [];
  if (all.length === 0) return "none";
  const ext = all[0];
  if (all.length > 1 || !ext) return "malformed";
  let inner: OctetString;
  try {
    inner = AsnConvert.parse(ext.extnValue.buffer, OctetString);
  } catch {
    return "malformed";
  }
  const n = inner.byteLength;
  if (n < 1 || n > OCSP_NONCE_MAX) return "malformed";
  // Strict DER: the value must be exactly one OCTET STRING (no trailing bytes, no long-form length for short values).
  const again = new Uint8Array(AsnConvert.serialize(new OctetString(inner.buffer)));
  const got = new Uint8Array(ext.extnValue.buffer);
  if (again.length !== got.length || !again.every((v, k) => v === got[k])) return "malformed";
  return ext;
}


const HASH_OIDS: Record<string, "SHA-1" | "SHA-256"> = {
  "1.3.14.3.2.26": "SHA-1",
  "2.16.840.1.101.3.4.2.1": "SHA-256",
};

type OcspOutcome = "good" | "revoked" | "unknown" | "malformed" | "unauthorized" | "internalError";

interface OcspResult {
  der: Buffer;
  outcome: OcspOutcome;
}

function statusOnly(status: OCSPResponseStatus, outcome: OcspOutcome): OcspResult {
  return { der: Buffer.from(AsnConvert.serialize(new OCSPResponse({ responseStatus: status }))), outcome };
}

function hex(b: ArrayBuffer | OctetString): string {
  const buf = b instanceof OctetString ? b.buffer : b;
  return Buffer.from(new Uint8Array(buf)).toString("hex");
}

function caFor(ca: CertificateAuthority, id: CertID): LoadedCa | undefined {
  const alg = HASH_OIDS[id.hashAlgorithm.algorithm];
  if (!alg) return undefined;
  const name = hex(id.issuerNameHash);
  const key = hex(id.issuerKeyHash);
  return ca.issuers().find((c) => c.certIdHashes[alg].name === name && c.certIdHashes[alg].key === key);
}

async function sign(ca: CertificateAuthority, signer: LoadedCa, data: ArrayBuffer): Promise<{ algorithm: AlgorithmIdentifier; signature: ArrayBuffer }> {
  const alg = signingAlgorithmFor(signer.key);
  const raw = await ca.crypto.subtle.sign(alg, signer.key, data);
  if (alg.name === "ECDSA") {
    const der = new x509.AsnEcSignatureFormatter().toAsnSignature(signer.key.algorithm, raw);
    if (!der) throw new Error("cannot encode the ECDSA signature");
    return { algorithm: new x509.EcAlgorithm().toAsnAlgorithm({ name: "ECDSA", hash: { name: alg.hash } } as x509.HashedAlgorithm) ?? fail(), signature: der };
  }
  return { algorithm: new x509.RsaAlgorithm().toAsnAlgorithm({ name: alg.name, hash: { name: alg.hash } } as x509.HashedAlgorithm) ?? fail(), signature: raw };
}

function fail(): never {
  throw new Error("no ASN.1 algorithm identifier for the CA key");
}

/** Answer one DER OCSPRequest. Never throws: failures become OCSP error statuses. */
export async function respondOcsp(ca: CertificateAuthority, requestDer: Uint8Array, validityMinutes = 60): Promise<OcspResult> {
  let req: OCSPRequest;
  try {
    req = AsnConvert.parse(requestDer, OCSPRequest);
  } catch {
    return statusOnly(OCSPResponseStatus.malformedRequest, "malformed");
  }
  const list = req.tbsRequest.requestList;
  const first = list[0];
  if (!first || list.length > 50) return statusOnly(OCSPResponseStatus.malformedRequest, "malformed");
  const nonce = requestNonce(req);
  if (nonce === "malformed") return statusOnly(OCSPResponseStatus.malformedRequest, "malformed");
  const signer = caFor(ca, first.reqCert);
  if (!signer) return statusOnly(OCSPResponseStatus.unauthorized, "unauthorized");
  try {
    const now = wholeSeconds(Date.now());
    const nextUpdate = new Date(now.getTime() + validityMinutes * 60e3);
    let outcome: OcspOutcome = "good";
    const responses: SingleResponse[] = [];
    for (const r of list) {
      const issuer = caFor(ca, r.reqCert);
      const serial = normalizeSerial(hex(r.reqCert.serialNumber) || "0");
      const rec = issuer ? await ca.store.getCertificate(serial) : undefined;
      let certStatus: CertStatus;
      if (!issuer || !rec || rec.issuerId !== issuer.record.id) {
        certStatus = new CertStatus({ unknown: null });
        outcome = "unknown";
      } else if (rec.status === "revoked") {
        const info = new RevokedInfo({ revocationTime: wholeSeconds(rec.revokedAt ?? now) });
        if (rec.revocationReason) info.revocationReason = new CRLReason(REVOCATION_REASON_CODES[rec.revocationReason]);
        certStatus = new CertStatus({ revoked: info });
        if (outcome !== "unknown") outcome = "revoked";
      } else {
        certStatus = new CertStatus({ good: null });
      }
      responses.push(new SingleResponse({ certID: r.reqCert, certStatus, thisUpdate: now, nextUpdate }));
    }
    const data = new ResponseData({
      responderID: new ResponderID({ byKey: new KeyHash(new Uint8Array(signer.keyHashSha1)) }),
      producedAt: now,
      responses,
      ...(nonce !== "none" ? { responseExtensions: [nonce] } : {}),
    });
    const tbs = AsnConvert.serialize(data);
    const { algorithm, signature } = await sign(ca, signer, tbs);
    const basic = new BasicOCSPResponse({ tbsResponseData: data, signatureAlgorithm: algorithm, signature });
    const resp = new OCSPResponse({
      responseStatus: OCSPResponseStatus.successful,
      responseBytes: new ResponseBytes({ responseType: id_pkix_ocsp_basic, response: new OctetString(AsnConvert.serialize(basic)) }),
    });
    return { der: Buffer.from(AsnConvert.serialize(resp)), outcome };
  } catch (e) {
    ca.log.error({ err: e }, "OCSP response failed");
    return statusOnly(OCSPResponseStatus.internalError, "internalError");
  }
}
