import "reflect-metadata";
import { AsnConvert, AsnProp, AsnPropTypes, AsnType, AsnTypeTypes } from "@peculiar/asn1-schema";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";

/**
 * edgetrust's private OID arc. Chosen under the IANA Private Enterprise Number 32473, which RFC 5612 reserves for
 * examples and documentation, until the project registers its own PEN (free, from IANA): then change this one
 * constant. (A UUID arc `2.25.<uuid>` was the first choice, but asn1js — under @peculiar/x509 — cannot round-trip
 * arcs above 2^53, so the generator corrupts them.)
 *   1.3.6.1.4.1.32473.5812          edgetrust
 *   1.3.6.1.4.1.32473.5812.1        certificate extensions
 *   1.3.6.1.4.1.32473.5812.1.1      id-edgetrust-moduleAttestation
 */
const EDGETRUST_OID_ARC = "1.3.6.1.4.1.32473.5812";
export const OID_MODULE_ATTESTATION = `${EDGETRUST_OID_ARC}.1.1`;

/**
 * ```asn1
 * ModuleAttestation ::= SEQUENCE {
 *   version          INTEGER (1),
 *   imageDigest      IA5String,          -- "sha256:<64 hex>", the digest the device attested
 *   manifestVersion  INTEGER (0..MAX),   -- version of the signed deployment manifest that pinned it
 *   deploymentId     UTF8String OPTIONAL -- the manifest's deploymentId
 * }
 * ```
 * Carried in a non-critical extension of module certificates.
 */
@AsnType({ type: AsnTypeTypes.Sequence })
export class ModuleAttestationAsn {
  @AsnProp({ type: AsnPropTypes.Integer })
  version = 1;

  @AsnProp({ type: AsnPropTypes.IA5String })
  imageDigest = "";

  @AsnProp({ type: AsnPropTypes.Integer })
  manifestVersion = 0;

  @AsnProp({ type: AsnPropTypes.Utf8String, optional: true })
  deploymentId?: string;

  constructor(params: Partial<ModuleAttestationAsn> = {}) {
    Object.assign(this, params);
  }
}

export interface ModuleAttestation {
  /** `sha256:<64 lowercase hex>` */
  imageDigest: string;
  manifestVersion: number;
  deploymentId?: string;
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

function isModuleAttestationOid(oid: string): boolean {
  return oid === OID_MODULE_ATTESTATION;
}

export function checkModuleAttestation(a: ModuleAttestation): void {
  if (!DIGEST_RE.test(a.imageDigest)) {
    throw new EdgeTrustError("INVALID_INPUT", `image digest must be sha256:<64 lowercase hex>, got ${JSON.stringify(a.imageDigest)}`);
  }
  if (!Number.isSafeInteger(a.manifestVersion) || a.manifestVersion < 0) {
    throw new EdgeTrustError("INVALID_INPUT", `manifest version must be a non-negative integer, got ${String(a.manifestVersion)}`);
  }
}

/** The module-attestation extension (non-critical) for a module certificate. */
export function moduleAttestationExtension(a: ModuleAttestation): x509.Extension {
  checkModuleAttestation(a);
  const value = new ModuleAttestationAsn({ version: 1, imageDigest: a.imageDigest, manifestVersion: a.manifestVersion });
  if (a.deploymentId !== undefined) value.deploymentId = a.deploymentId;
  return new x509.Extension(OID_MODULE_ATTESTATION, false, AsnConvert.serialize(value));
}

/** The attested image digest + manifest version from a module certificate, or undefined when it has none. */
export function parseModuleAttestation(cert: x509.X509Certificate): ModuleAttestation | undefined {
  const ext = cert.extensions.find((e) => isModuleAttestationOid(e.type));
  if (!ext) return undefined;
  let v: ModuleAttestationAsn;
  try {
    v = AsnConvert.parse(ext.value, ModuleAttestationAsn);
  } catch (e) {
    throw new EdgeTrustError("PKI_PROFILE_VIOLATION", "module attestation extension is malformed", { cause: e });
  }
  if (v.version !== 1) throw new EdgeTrustError("PKI_PROFILE_VIOLATION", `module attestation extension version ${v.version} is not supported`);
  const out: ModuleAttestation = { imageDigest: v.imageDigest, manifestVersion: v.manifestVersion };
  if (v.deploymentId !== undefined) out.deploymentId = v.deploymentId;
  checkModuleAttestation(out);
  return out;
}
