import "reflect-metadata";
import { AsnArray, AsnConvert, AsnPropTypes, AsnType, AsnTypeTypes } from "@peculiar/asn1-schema";
import { Certificate } from "@peculiar/asn1-x509";
import { CertificateChoices, CertificateSet, CMSVersion, ContentInfo, DigestAlgorithmIdentifiers, EncapsulatedContentInfo, SignedData, SignerInfos, id_data, id_signedData } from "@peculiar/asn1-cms";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../../common/index.js";

/** RFC 7030 content types. */
export const EST_CERTS_TYPE = "application/pkcs7-mime; smime-type=certs-only";
export const EST_CSRATTRS_TYPE = "application/csrattrs";

/**
 * A degenerate ("certs-only") CMS SignedData (RFC 5652 §5, RFC 7030 §4.1.3): version 1, no digest algorithms, id-data
 * content with no eContent, the certificates, no signers. DER, built with @peculiar/asn1-cms.
 */
export function certsOnlyPkcs7(certs: (string | x509.X509Certificate)[]): Buffer {
  const set = new CertificateSet(certs.map((c) => {
    const cert = typeof c === "string" ? new x509.X509Certificate(c) : c;
    return new CertificateChoices({ certificate: AsnConvert.parse(cert.rawData, Certificate) });
  }));
  const signed = new SignedData({
    version: CMSVersion.v1,
    digestAlgorithms: new DigestAlgorithmIdentifiers(),
    encapContentInfo: new EncapsulatedContentInfo({ eContentType: id_data }),
    certificates: set,
    signerInfos: new SignerInfos(),
  });
  return Buffer.from(AsnConvert.serialize(new ContentInfo({ contentType: id_signedData, content: AsnConvert.serialize(signed) })));
}

/** RFC 7030 §4.1.3 / RFC 8951: base64 with LF line breaks every 64 characters (GNU `base64 -d` rejects CR). */
export function base64Body(der: Uint8Array): string {
  return (Buffer.from(der).toString("base64").match(/.{1,64}/g) ?? []).join("\n") + "\n";
}

/** CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID — here only OIDs (the attributes we want the CSR to use). */
@AsnType({ type: AsnTypeTypes.Sequence, itemType: AsnPropTypes.ObjectIdentifier })
class CsrAttrs extends AsnArray<string> {
  constructor(items?: string[]) {
    super(items);
    Object.setPrototypeOf(this, CsrAttrs.prototype);
  }
}

/** What our CSR checks accept: ECDSA with SHA-256 (P-256) or SHA-384 (P-384), RSA with SHA-256. */
const CSR_ATTR_OIDS = [
  "1.2.840.10045.4.3.2", // ecdsa-with-SHA256
  "1.2.840.10045.4.3.3", // ecdsa-with-SHA384
  "1.2.840.113549.1.1.11", // sha256WithRSAEncryption
];

export function csrAttrsDer(oids: string[] = CSR_ATTR_OIDS): Buffer {
  return Buffer.from(AsnConvert.serialize(new CsrAttrs(oids)));
}

/**
 * An EST request body as PKCS#10 PEM. RFC 7030 sends base64 DER (`application/pkcs10`, with or without line breaks
 * and an old `Content-Transfer-Encoding: base64` header); we also accept PEM and raw DER.
 */
export function estCsrToPem(body: Buffer): string {
  const text = body.toString("latin1").trim();
  if (text.startsWith("-----BEGIN")) return text;
  let der: Buffer;
  if (/^[A-Za-z0-9+/=\s]+$/.test(text)) der = Buffer.from(text.replace(/\s+/g, ""), "base64");
  else der = body;
  if (der.length < 64 || der[0] !== 0x30) throw new EdgeTrustError("PKI_INVALID_CSR", "the body is not a base64 DER PKCS#10 request");
  return x509.PemConverter.encode(der.buffer.slice(der.byteOffset, der.byteOffset + der.byteLength) as ArrayBuffer, "CERTIFICATE REQUEST");
}
