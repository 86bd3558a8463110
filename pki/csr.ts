import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { AsnConvert } from "@peculiar/asn1-schema";
import { ECDSASigValue } from "@peculiar/asn1-ecc";
import { CertificationRequest } from "@peculiar/asn1-csr";
import { EdgeTrustError } from "../common/index.js";
import type { KeyAlgorithm } from "../hsm/index.js";
import { keyAlgorithmOfSpki } from "./keys.js";
import { getProfile, type Profile, type ProfileName } from "./profiles.js";

/** SANs a CSR asks for, by kind. Callers compare them with the record and refuse extras (`refuseExtraSans`). */
export interface RequestedSans {
  dns: string[];
  uri: string[];
  ip: string[];
  email: string[];
  /** Anything else, as `type:value`. */
  other: string[];
}

export interface VerifiedCsr {
  csr: x509.Pkcs10CertificateRequest;
  /** The subject DN as the CSR wrote it (informational: issuers take the subject from the record). */
  subject: string;
  publicKey: x509.PublicKey;
  keyAlgorithm: KeyAlgorithm;
  sans: RequestedSans;
  /** OIDs of the requested extensions. */
  extensions: string[];
}

export interface VerifyCsrOptions {
  /** Key algorithms allowed (default: the profile's, else all four supported). */
  allowedKeyAlgorithms?: KeyAlgorithm[];
  profile?: Profile | ProfileName;
  crypto?: Crypto;
}

const OID_BASIC_CONSTRAINTS = "2.5.29.19";
const OID_KEY_USAGE = "2.5.29.15";
const OID_EXT_KEY_USAGE = "2.5.29.37";
const OID_SAN = "2.5.29.17";
const OID_SKI = "2.5.29.14";
/** Extensions a CSR may request at all; the profile decides what the certificate actually carries. */
const UNDERSTOOD = new Set([OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, OID_EXT_KEY_USAGE, OID_SAN, OID_SKI]);

function invalid(message: string, cause?: unknown): EdgeTrustError {
  return new EdgeTrustError("PKI_INVALID_CSR", message, cause === undefined ? {} : { cause });
}

function toDer(input: string | BufferSource): ArrayBuffer {
  if (typeof input === "string") {
    if (!/-----BEGIN (NEW )?CERTIFICATE REQUEST-----/.test(input)) throw invalid("CSR is not a PEM CERTIFICATE REQUEST");
    try {
      return x509.PemConverter.decodeFirst(input);
    } catch (e) {
      throw invalid("CSR PEM cannot be decoded", e);
    }
  }
  const u = input instanceof ArrayBuffer ? new Uint8Array(input) : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  return u.slice().buffer;
}

const ecdsaFormatter = new x509.AsnEcSignatureFormatter();
const defaultFormatter = new x509.AsnDefaultSignatureFormatter();

/**
 * Is this ECDSA signature value canonical DER? @peculiar/asn1-schema parses BER leniently (long-form or indefinite
 * lengths, trailing bytes) and hands over INTEGER contents as raw bytes, and x509's formatter strips leading zero
 * bytes before converting to P1363, so a non-canonical encoding of a valid (r, s) would verify. DER allows exactly one
 * encoding: re-serialise what was parsed and compare, and require r and s to be minimal positive INTEGERs.
 */
export function isCanonicalEcdsaDer(signature: ArrayBuffer | Uint8Array): boolean {
  const input = signature instanceof ArrayBuffer ? new Uint8Array(signature) : signature;
  let value: ECDSASigValue;
  try {
    value = AsnConvert.parse(input, ECDSASigValue);
  } catch {
    return false;
  }
  const minimalPositive = (i: ArrayBuffer): boolean => {
    const b = new Uint8Array(i);
    if (b.length === 0 || (b[0] ?? 0) >= 0x80) return false; // empty or negative
    return !(b.length > 1 && b[0] === 0 && (b[1] ?? 0) < 0x80); // a redundant leading zero
  };
  if (!minimalPositive(value.r) || !minimalPositive(value.s)) return false;
  const again = new Uint8Array(AsnConvert.serialize(value));
  return again.length === input.length && again.every((v, k) => v === input[k]);
}

/**
 * The signature check of verifyCsr — the one `Pkcs10CertificateRequest.verify` performs, factored out so it can be
 * tested on raw (key, message, signature) vectors (Wycheproof): import the SPKI for the signature algorithm, convert
 * the ASN.1 signature value with @peculiar/x509's own formatter (ECDSA: DER Ecdsa-Sig-Value → IEEE P1363 r||s), then
 * WebCrypto `verify` over the signed bytes. Stricter than the library in one way: an ECDSA signature that is not
 * canonical DER is refused before conversion (see `isCanonicalEcdsaDer`). Returns false for any signature that does
 * not verify or cannot be converted; throws only when the key cannot be imported for the algorithm.
 */
export async function verifyAsnSignature(
  publicKey: x509.PublicKey,
  signatureAlgorithm: Algorithm,
  signature: ArrayBuffer,
  signed: ArrayBuffer,
  crypto: Crypto = globalThis.crypto,
): Promise<boolean> {
  const algorithm = { ...publicKey.algorithm, ...signatureAlgorithm };
  const key = await publicKey.export(algorithm, ["verify"], crypto);
  let web: ArrayBuffer | null;
  if (algorithm.name === "ECDSA") {
    if (!isCanonicalEcdsaDer(signature)) return false;
    try {
      web = ecdsaFormatter.toWebSignature(algorithm, signature);
    } catch {
      return false; // e.g. r or s longer than the curve order
    }
  } else {
    web = defaultFormatter.toWebSignature(algorithm, signature);
  }
  if (!web) return false;
  return crypto.subtle.verify(signatureAlgorithm, key, web, signed);
}

/**
 * The bytes a CSR's signature covers: the CertificationRequestInfo exactly as received — what
 * `Pkcs10CertificateRequest.verify` uses (its `tbs` is TypeScript-private, so it is read by name, checked, and
 * otherwise taken from @peculiar/asn1-csr's raw capture of the same element).
 */
export function signedBytes(csr: x509.Pkcs10CertificateRequest): ArrayBuffer {
  const tbs: unknown = csr["tbs"];
  if (tbs instanceof ArrayBuffer) return tbs;
  const req = AsnConvert.parse(csr.rawData, CertificationRequest);
  return req.certificationRequestInfoRaw ?? AsnConvert.serialize(req.certificationRequestInfo);
}

/**
 * Parse and check a PKCS#10 request: its signature (proof of possession of the key), the key type and size, no
 * request for CA:TRUE, no critical extension we do not understand, no duplicate extension. Returns what it asks for.
 */
export async function verifyCsr(input: string | BufferSource, opts: VerifyCsrOptions = {}): Promise<VerifiedCsr> {
  const crypto = opts.crypto ?? globalThis.crypto;
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(toDer(input));
  } catch (e) {
    if (e instanceof EdgeTrustError) throw e;
    throw invalid("CSR cannot be parsed", e);
  }

  const keyAlgorithm = keyAlgorithmOfSpki(csr.publicKey.rawData);
  const allowed = opts.allowedKeyAlgorithms ?? (opts.profile ? getProfile(opts.profile).allowedKeyAlgorithms : undefined);
  if (allowed && !allowed.includes(keyAlgorithm)) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `${keyAlgorithm} keys are not allowed here`, { hint: `allowed: ${allowed.join(", ")}` });
  }

  let ok = false;
  try {
    ok = await verifyAsnSignature(csr.publicKey, csr.signatureAlgorithm, csr.signature, signedBytes(csr), crypto);
  } catch (e) {
    throw invalid("CSR signature cannot be checked", e);
  }
  if (!ok) throw invalid("CSR signature does not verify (no proof of possession of the key)");

  let extensions: x509.Extension[];
  try {
    extensions = csr.extensions;
  } catch (e) {
    throw invalid("CSR extension request cannot be parsed", e);
  }
  const seen = new Set<string>();
  const sans: RequestedSans = { dns: [], uri: [], ip: [], email: [], other: [] };
  for (const ext of extensions) {
    if (seen.has(ext.type)) throw invalid(`CSR requests extension ${ext.type} twice`);
    seen.add(ext.type);
    if (!UNDERSTOOD.has(ext.type)) {
      if (ext.critical) throw invalid(`CSR requests an unknown critical extension ${ext.type}`);
      continue;
    }
    try {
      if (ext.type === OID_BASIC_CONSTRAINTS) {
        const bc = new x509.BasicConstraintsExtension(ext.rawData);
        if (bc.ca) throw new EdgeTrustError("PKI_PROFILE_VIOLATION", "CSR requests a CA certificate (basicConstraints CA:TRUE)");
      } else if (ext.type === OID_SAN) {
        const san = new x509.SubjectAlternativeNameExtension(ext.rawData);
        for (const n of san.names.items) {
          if (n.type === "dns") sans.dns.push(n.value);
          else if (n.type === "url") sans.uri.push(n.value);
          else if (n.type === "ip") sans.ip.push(n.value);
          else if (n.type === "email") sans.email.push(n.value);
          else sans.other.push(`${n.type}:${n.value}`);
        }
      }
    } catch (e) {
      if (e instanceof EdgeTrustError) throw e;
      throw invalid(`CSR extension ${ext.type} is malformed`, e);
    }
  }
  return { csr, subject: csr.subject, publicKey: csr.publicKey, keyAlgorithm, sans, extensions: [...seen] };
}

/** Throw PKI_PROFILE_VIOLATION when a CSR asks for any SAN the record does not give it. */
export function refuseExtraSans(requested: RequestedSans, allowed: Partial<Pick<RequestedSans, "dns" | "uri" | "ip" | "email">>): void {
  const extras: string[] = [];
  for (const kind of ["dns", "uri", "ip", "email"] as const) {
    const ok = new Set(allowed[kind] ?? []);
    for (const v of requested[kind]) if (!ok.has(v)) extras.push(`${kind}:${v}`);
  }
  extras.push(...requested.other);
  if (extras.length > 0) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `CSR asks for names it is not entitled to: ${extras.join(", ")}`);
  }
}
