import { createPublicKey } from "node:crypto";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import { AlgorithmIdentifier, SubjectPublicKeyInfo } from "@peculiar/asn1-x509";
import { ECParameters, id_ecPublicKey, id_secp256r1, id_secp384r1 } from "@peculiar/asn1-ecc";
import { DigestInfo, RSAPublicKey, id_rsaEncryption, sha256, sha384, sha512 } from "@peculiar/asn1-rsa";
import { EdgeTrustError } from "../common/index.js";
import type { HashAlgorithm, KeyAlgorithm } from "./types.js";

/**
 * Public-key plumbing shared by the PKCS#11 store (and usable by any backend): EC curve parameters, CKA_EC_POINT
 * decoding, SubjectPublicKeyInfo and JWK export, PKCS#1 DigestInfo. All ASN.1 goes through @peculiar/asn1-*.
 */
export interface CurveInfo {
  algorithm: "EC-P256" | "EC-P384";
  oid: string;
  /** Bytes of one coordinate. */
  fieldBytes: number;
  jwkCrv: "P-256" | "P-384";
}

export const CURVES: readonly CurveInfo[] = [
  { algorithm: "EC-P256", oid: id_secp256r1, fieldBytes: 32, jwkCrv: "P-256" },
  { algorithm: "EC-P384", oid: id_secp384r1, fieldBytes: 48, jwkCrv: "P-384" },
];

export function curveOf(alg: KeyAlgorithm): CurveInfo | undefined {
  return CURVES.find((c) => c.algorithm === alg);
}

export function rsaBitsOf(alg: KeyAlgorithm): number | undefined {
  return alg === "RSA-2048" ? 2048 : alg === "RSA-3072" ? 3072 : undefined;
}

const toBuf = (ab: ArrayBuffer): Buffer => Buffer.from(new Uint8Array(ab));

/** DER ECParameters (namedCurve OID): the value of CKA_EC_PARAMS. */
export function ecParamsDer(curve: CurveInfo): Buffer {
  return toBuf(AsnConvert.serialize(new ECParameters({ namedCurve: curve.oid })));
}

/** The curve a CKA_EC_PARAMS value names, or undefined for curves this project does not use. */
export function curveFromEcParams(der: Buffer): CurveInfo | undefined {
  try {
    const p = AsnConvert.parse(der, ECParameters);
    return CURVES.find((c) => c.oid === p.namedCurve);
  } catch {
    return undefined;
  }
}

/**
 * CKA_EC_POINT as the uncompressed point 04||X||Y. PKCS#11 says the attribute is a DER OCTET STRING wrapping the
 * point; some tokens (and older SoftHSM builds) return the raw point. Both start with 0x04, so the expected length
 * decides: a raw point is exactly 1 + 2·fieldBytes long.
 */
export function decodeEcPoint(value: Buffer, fieldBytes: number): Buffer {
  const rawLen = 1 + 2 * fieldBytes;
  if (value.length === rawLen && value[0] === 0x04) return Buffer.from(value);
  let inner: Buffer;
  try {
    inner = toBuf(AsnConvert.parse(value, OctetString).buffer);
  } catch {
    throw ecPointError(value.length, fieldBytes);
  }
  // The wrapper must be exactly the DER of that OCTET STRING (no trailing bytes, no indefinite length).
  const reencoded = toBuf(AsnConvert.serialize(new OctetString(inner)));
  if (!reencoded.equals(value) || inner.length !== rawLen || inner[0] !== 0x04) throw ecPointError(value.length, fieldBytes);
  return inner;
}

function ecPointError(len: number, fieldBytes: number): EdgeTrustError {
  return new EdgeTrustError("HSM_OPERATION_FAILED", `the token returned an EC point of ${len} bytes that is neither a raw uncompressed point nor a DER OCTET STRING wrapping one (P-${fieldBytes * 8})`, {
    hint: "the token may use compressed points or another curve; generate the key through edgetrust hsm keygen",
  });
}

export function ecSpki(curve: CurveInfo, point: Buffer): Buffer {
  const spki = new SubjectPublicKeyInfo({
    algorithm: new AlgorithmIdentifier({ algorithm: id_ecPublicKey, parameters: AsnConvert.serialize(new ECParameters({ namedCurve: curve.oid })) }),
    subjectPublicKey: new Uint8Array(point).buffer,
  });
  return toBuf(AsnConvert.serialize(spki));
}

/** Unsigned big-endian integer bytes as a DER INTEGER body (leading zero when the top bit is set). */
function positive(b: Buffer): ArrayBuffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  const trimmed = b.subarray(i);
  const out = (trimmed[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.from([0]), trimmed]) : Buffer.from(trimmed);
  return new Uint8Array(out).buffer;
}

export function rsaSpki(modulus: Buffer, publicExponent: Buffer): Buffer {
  const pub = new RSAPublicKey({ modulus: positive(modulus), publicExponent: positive(publicExponent) });
  const spki = new SubjectPublicKeyInfo({
    algorithm: new AlgorithmIdentifier({ algorithm: id_rsaEncryption, parameters: null }),
    subjectPublicKey: AsnConvert.serialize(pub),
  });
  return toBuf(AsnConvert.serialize(spki));
}

export function jwkFromSpki(spki: Buffer): JsonWebKey {
  return createPublicKey({ key: spki, format: "der", type: "spki" }).export({ format: "jwk" });
}

/** PKCS#1 v1.5 DigestInfo for CKM_RSA_PKCS when the token cannot hash. */
export function digestInfo(hash: HashAlgorithm, digest: Buffer): Buffer {
  const alg = hash === "SHA-256" ? sha256 : hash === "SHA-384" ? sha384 : sha512;
  return toBuf(AsnConvert.serialize(new DigestInfo({ digestAlgorithm: alg, digest: new OctetString(digest) })));
}

export function nodeHashName(hash: HashAlgorithm): "sha256" | "sha384" | "sha512" {
  return hash === "SHA-256" ? "sha256" : hash === "SHA-384" ? "sha384" : "sha512";
}
