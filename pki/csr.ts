import "reflect-metadata";
import { createHash, verify as nodeVerify, type KeyObject } from "node:crypto";
import * as asn1js from "asn1js";
import * as x509 from "@peculiar/x509";
import { AsnConvert } from "@peculiar/asn1-schema";
import { ECDSASigValue } from "@peculiar/asn1-ecc";
import { CertificationRequest } from "@peculiar/asn1-csr";
import { EdgeTrustError } from "../common/index.js";
import type { KeyAlgorithm } from "../hsm/index.js";
import { contentBytes, elementBytes, readChildren, readElement } from "./der.js";
import { importSpkiForVerify, keyAlgorithmOfKey, keyAlgorithmOfSpki, rememberKeyAlgorithm } from "./keys.js";
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
  /** The request parsed by @peculiar/x509 (built on first use). */
  readonly csr: x509.Pkcs10CertificateRequest;
  /** The subject key, DER SubjectPublicKeyInfo exactly as requested. */
  spki: Uint8Array;
  /** The subject DN as the CSR wrote it (informational: issuers take the subject from the record). */
  subject: string;
  /** The subject key as an x509 object (built on first use). */
  readonly publicKey: x509.PublicKey;
  keyAlgorithm: KeyAlgorithm;
  sans: RequestedSans;
  /** OIDs of the requested extensions. */
  extensions: string[];
}

interface VerifyCsrOptions {
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

/** One PEM block of a CSR and nothing else (RFC 7468 §3 "strict": no headers, base64 lines, optional CR). */
const SINGLE_CSR_PEM = /^\s*-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+?)\r?\n?-----END \1CERTIFICATE REQUEST-----\s*$/;

/**
 * The DER of the one CSR in a single-block PEM whose base64 is canonical (it re-encodes to itself): exactly what
 * @peculiar/x509's PemConverter returns for it, without its generic PEM parser. Undefined for anything else, which
 * then goes through the PemConverter as before.
 */
export function singlePemDer(input: string): ArrayBuffer | undefined {
  const m = SINGLE_CSR_PEM.exec(input);
  const body = m?.[2]?.replace(/\r?\n/g, "");
  if (!body) return undefined;
  const der = Buffer.from(body, "base64");
  if (der.toString("base64") !== body) return undefined;
  return der.buffer.slice(der.byteOffset, der.byteOffset + der.byteLength);
}

function toDer(input: string | BufferSource): ArrayBuffer {
  if (typeof input === "string") {
    if (!/-----BEGIN (NEW )?CERTIFICATE REQUEST-----/.test(input)) throw invalid("CSR is not a PEM CERTIFICATE REQUEST");
    const single = singlePemDer(input);
    if (single) return single;
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
function isCanonicalEcdsaDer(signature: ArrayBuffer | Uint8Array): boolean {
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
  const nodeHash = nativeHash(signatureAlgorithm);
  if (nodeHash && crypto === globalThis.crypto) {
    let key: KeyObject;
    try {
      key = await importSpkiForVerify(new Uint8Array(publicKey.rawData));
    } catch (e) {
      throw invalid("the CSR key cannot be imported", e);
    }
    return verifyNative(key, signatureAlgorithm.name, nodeHash, new Uint8Array(signature), new Uint8Array(signed));
  }
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

/** Node's digest name for ECDSA and RSASSA-PKCS1-v1_5 with SHA-2; undefined for anything else (the WebCrypto path). */
function nativeHash(alg: Algorithm): string | undefined {
  if (alg.name !== "ECDSA" && alg.name !== "RSASSA-PKCS1-v1_5") return undefined;
  const h = (alg as Algorithm & { hash?: string | { name: string } }).hash;
  const name = typeof h === "string" ? h : h?.name;
  return name === "SHA-256" || name === "SHA-384" || name === "SHA-512" ? name.replace("SHA-", "sha") : undefined;
}

/**
 * The signature check on OpenSSL (Node's native verify), the ECDSA signature handed over in DER as it came. Strict
 * DER is OpenSSL's own refusal here: `ossl_ecdsa_verify` re-encodes the parsed ECDSA-Sig-Value and refuses the
 * signature unless the re-encoding equals the input byte for byte (BER lengths, padded or negative INTEGERs, trailing
 * data), then requires 0 < r, s < n — the same refusal `isCanonicalEcdsaDer` makes on the WebCrypto path, without a
 * second ASN.1 round trip in JavaScript per CSR. The Wycheproof vectors (every BER/trailing-data case) hold it.
 */
function verifyNative(key: KeyObject, name: string, hash: string, signature: Uint8Array, signed: Uint8Array): boolean {
  try {
    if (name === "ECDSA") {
      if (key.asymmetricKeyType !== "ec") return false;
      return nodeVerify(hash, signed, { key, dsaEncoding: "der" }, signature);
    }
    if (key.asymmetricKeyType !== "rsa") return false;
    return nodeVerify(hash, signed, key, signature);
  } catch {
    return false;
  }
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

/** PKCS#9 extensionRequest: the attribute a CSR asks for extensions in. */
const OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14";

/** Signature algorithms the native path reads by OID; anything else goes through @peculiar/x509 as before. */
const SIGNATURE_OIDS: Record<string, { name: string; hash: string }> = {
  "1.2.840.10045.4.3.2": { name: "ECDSA", hash: "SHA-256" },
  "1.2.840.10045.4.3.3": { name: "ECDSA", hash: "SHA-384" },
  "1.2.840.10045.4.3.4": { name: "ECDSA", hash: "SHA-512" },
  "1.2.840.113549.1.1.11": { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
  "1.2.840.113549.1.1.12": { name: "RSASSA-PKCS1-v1_5", hash: "SHA-384" },
  "1.2.840.113549.1.1.13": { name: "RSASSA-PKCS1-v1_5", hash: "SHA-512" },
};

/** The parts of a PKCS#10 request the checks need, read with asn1js (the decoder under @peculiar/asn1-schema). */
interface CsrParts {
  info: Uint8Array;
  subject: Uint8Array;
  spki: Uint8Array;
  /** SHA-1 of the subjectPublicKey bits (the SKI issuance writes). */
  keyId: Uint8Array;
  signatureAlgorithm: { name: string; hash: string };
  signature: Uint8Array;
  extensions: Uint8Array[];
}

const raw = (b: asn1js.AsnType): Uint8Array => new Uint8Array(b.valueBeforeDecodeView);

/** DER of the OIDs the reader compares, encoded by asn1js from their dotted form. */
const oidDer = (oid: string): string => Buffer.from(new asn1js.ObjectIdentifier({ value: oid }).toBER()).toString("hex");
const SIGNATURE_OIDS_BY_DER = new Map(Object.entries(SIGNATURE_OIDS).map(([oid, alg]) => [oidDer(oid), alg]));
const EXTENSION_REQUEST_DER = oidDer(OID_EXTENSION_REQUEST);

/** X.690 universal tags (and the one context tag) of a CertificationRequest (RFC 2986 §4). */
const CSR_TAG = { INTEGER: 0x02, BIT_STRING: 0x03, OID: 0x06, SEQUENCE: 0x30, SET: 0x31, ATTRIBUTES: 0xa0 } as const;

/**
 * `readCsr` for a request in DER of the expected shape, read with the DER element reader (der.ts) instead of asn1js,
 * which decodes every element into objects (about a sixth of a CSR check's CPU). It returns the same parts asn1js would
 * give for such a request; anything else — BER, another shape, a signature algorithm outside the table, a bad
 * attribute — is undefined and `readCsr` (asn1js) decides as before, so what is accepted or refused does not change.
 */
export function readCsrDer(der: Uint8Array): CsrParts | undefined {
  const top = readElement(der, 0);
  if (!top || top.tag !== CSR_TAG.SEQUENCE || top.end !== der.length) return undefined;
  const [info, alg, sig, extra] = readChildren(der, top) ?? [];
  if (!info || !alg || !sig || extra || info.tag !== CSR_TAG.SEQUENCE || alg.tag !== CSR_TAG.SEQUENCE || sig.tag !== CSR_TAG.BIT_STRING) return undefined;
  const [version, subject, spki, attrs, more] = readChildren(der, info) ?? [];
  if (!version || !subject || !spki || more || version.tag !== CSR_TAG.INTEGER || subject.tag !== CSR_TAG.SEQUENCE || spki.tag !== CSR_TAG.SEQUENCE) return undefined;
  const oid = readChildren(der, alg)?.[0];
  if (!oid || oid.tag !== CSR_TAG.OID) return undefined;
  const signatureAlgorithm = SIGNATURE_OIDS_BY_DER.get(Buffer.from(elementBytes(der, oid)).toString("hex"));
  // A BIT STRING's first content octet counts the unused bits of the last (X.690 §8.6.2.2): a signature has none.
  if (!signatureAlgorithm || sig.end === sig.contentStart || der[sig.contentStart] !== 0) return undefined;
  const extensions: Uint8Array[] = [];
  if (attrs) {
    if (attrs.tag !== CSR_TAG.ATTRIBUTES) return undefined;
    const list = readChildren(der, attrs);
    if (!list) return undefined;
    for (const a of list) {
      const [type, values] = a.tag === CSR_TAG.SEQUENCE ? readChildren(der, a) ?? [] : [];
      if (!type || !values || type.tag !== CSR_TAG.OID || values.tag !== CSR_TAG.SET) return undefined;
      if (Buffer.from(elementBytes(der, type)).toString("hex") !== EXTENSION_REQUEST_DER) continue;
      const exts = readChildren(der, values)?.[0];
      if (!exts || exts.tag !== CSR_TAG.SEQUENCE) return undefined;
      const requested = readChildren(der, exts);
      if (!requested) return undefined;
      for (const e of requested) extensions.push(elementBytes(der, e));
    }
  }
  const bits = readChildren(der, spki)?.[1];
  if (!bits || bits.tag !== CSR_TAG.BIT_STRING || bits.end === bits.contentStart) return undefined;
  const keyId = createHash("sha1").update(der.subarray(bits.contentStart + 1, bits.end)).digest();
  return {
    info: elementBytes(der, info), subject: elementBytes(der, subject), spki: elementBytes(der, spki), keyId, signatureAlgorithm,
    signature: contentBytes(der, sig).subarray(1), extensions,
  };
}

/**
 * CertificationRequest ::= SEQUENCE { certificationRequestInfo SEQUENCE { version, subject, subjectPKInfo,
 * attributes [0] }, signatureAlgorithm, signature BIT STRING } (RFC 2986). Undefined when the request uses a
 * signature algorithm outside the native table (the caller then takes the @peculiar/x509 path); throws on anything
 * that is not this structure.
 */
export function readCsr(der: Uint8Array): CsrParts | undefined {
  const top = asn1js.fromBER(der).result;
  const [info, alg, sig] = top instanceof asn1js.Sequence ? top.valueBlock.value : [];
  if (!(info instanceof asn1js.Sequence) || !(alg instanceof asn1js.Sequence) || !(sig instanceof asn1js.BitString)) throw invalid("CSR cannot be parsed");
  const [version, subject, spki, attrs] = info.valueBlock.value;
  if (!(version instanceof asn1js.Integer) || !(subject instanceof asn1js.Sequence) || !(spki instanceof asn1js.Sequence)) throw invalid("CSR cannot be parsed");
  const oid = alg.valueBlock.value[0];
  if (!(oid instanceof asn1js.ObjectIdentifier)) throw invalid("CSR cannot be parsed");
  const signatureAlgorithm = SIGNATURE_OIDS[oid.valueBlock.toString()];
  if (!signatureAlgorithm || sig.valueBlock.unusedBits !== 0) return undefined;
  const extensions: Uint8Array[] = [];
  if (attrs !== undefined) {
    if (!(attrs instanceof asn1js.Constructed) || attrs.idBlock.tagClass !== 3 || attrs.idBlock.tagNumber !== 0) throw invalid("CSR cannot be parsed");
    for (const a of attrs.valueBlock.value) {
      const [type, values] = a instanceof asn1js.Sequence ? a.valueBlock.value : [];
      if (!(type instanceof asn1js.ObjectIdentifier) || !(values instanceof asn1js.Set)) throw invalid("CSR attribute cannot be parsed");
      if (type.valueBlock.toString() !== OID_EXTENSION_REQUEST) continue;
      const exts = values.valueBlock.value[0];
      if (!(exts instanceof asn1js.Sequence)) throw invalid("CSR extension request cannot be parsed");
      for (const e of exts.valueBlock.value) extensions.push(raw(e));
    }
  }
  const bits = spki.valueBlock.value[1];
  if (!(bits instanceof asn1js.BitString)) throw invalid("CSR public key cannot be parsed");
  const keyId = createHash("sha1").update(bits.valueBlock.valueHexView).digest();
  return { info: raw(info), subject: raw(subject), spki: raw(spki), keyId, signatureAlgorithm, signature: new Uint8Array(sig.valueBlock.valueHexView), extensions };
}

/**
 * Parse and check a PKCS#10 request: its signature (proof of possession of the key), the key type and size, no
 * request for CA:TRUE, no critical extension we do not understand, no duplicate extension. Returns what it asks for.
 * The common requests (ECDSA / RSA PKCS#1 v1.5 with SHA-2) are read with asn1js and verified with Node's native
 * verify (the key imported once); any other goes through @peculiar/x509 and WebCrypto as before.
 */
export async function verifyCsr(input: string | BufferSource, opts: VerifyCsrOptions = {}): Promise<VerifiedCsr> {
  const der = new Uint8Array(toDer(input));
  let parts: CsrParts | undefined;
  try {
    parts = readCsrDer(der) ?? readCsr(der);
  } catch (e) {
    if (e instanceof EdgeTrustError) throw e;
    throw invalid("CSR cannot be parsed", e);
  }
  if (!parts || (opts.crypto && opts.crypto !== globalThis.crypto)) return verifyCsrWithX509(der.buffer, opts);

  const key = await importSpkiForVerify(parts.spki);
  const keyAlgorithm = keyAlgorithmOfKey(key);
  rememberKeyAlgorithm(parts.spki, keyAlgorithm, parts.keyId);
  const allowed = opts.allowedKeyAlgorithms ?? (opts.profile ? getProfile(opts.profile).allowedKeyAlgorithms : undefined);
  if (allowed && !allowed.includes(keyAlgorithm)) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `${keyAlgorithm} keys are not allowed here`, { hint: `allowed: ${allowed.join(", ")}` });
  }
  const { name, hash } = parts.signatureAlgorithm;
  if (!verifyNative(key, name, hash.replace("SHA-", "sha"), parts.signature, parts.info)) {
    throw invalid("CSR signature does not verify (no proof of possession of the key)");
  }
  let extensions: x509.Extension[];
  try {
    extensions = parts.extensions.map((e) => new x509.Extension(new Uint8Array(e)));
  } catch (e) {
    throw invalid("CSR extension request cannot be parsed", e);
  }
  const checked = checkExtensions(extensions);
  const spki = parts.spki;
  const subjectDer = parts.subject;
  let csr: x509.Pkcs10CertificateRequest | undefined;
  let publicKey: x509.PublicKey | undefined;
  let subject: string | undefined;
  return {
    get csr() { return (csr ??= new x509.Pkcs10CertificateRequest(der.slice().buffer)); },
    spki,
    get subject() { return (subject ??= new x509.Name(subjectDer.slice().buffer).toString()); },
    get publicKey() { return (publicKey ??= new x509.PublicKey(spki.slice().buffer)); },
    keyAlgorithm, sans: checked.sans, extensions: checked.oids,
  };
}

/** The @peculiar/x509 path: other signature algorithms (RSA-PSS, SHA-1) and a caller's own WebCrypto. */
async function verifyCsrWithX509(der: ArrayBuffer, opts: VerifyCsrOptions): Promise<VerifiedCsr> {
  const crypto = opts.crypto ?? globalThis.crypto;
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(der);
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
  const checked = checkExtensions(extensions);
  return { csr, spki: new Uint8Array(csr.publicKey.rawData), subject: csr.subject, publicKey: csr.publicKey, keyAlgorithm, sans: checked.sans, extensions: checked.oids };
}

/** No duplicate, no unknown critical extension, no CA:TRUE; the SANs it asks for. */
function checkExtensions(extensions: x509.Extension[]): { sans: RequestedSans; oids: string[] } {
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
  return { sans, oids: [...seen] };
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
