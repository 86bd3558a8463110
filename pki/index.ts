import "reflect-metadata";

export { PROFILES, PROFILE_NAMES, EKU_CLIENT_AUTH, EKU_SERVER_AUTH, getProfile, withLifetime } from "./profiles.js";
export type { Profile, ProfileName, ProfileRequirements } from "./profiles.js";
export { issueCertificate, issueCertificateDer, checkModuleDevice, randomSerial } from "./issue.js";
export type { IssueParams, Issuer, SubjectFields, IdentityFields, IssuedCertificate } from "./issue.js";
export { verifyCsr, refuseExtraSans, verifyAsnSignature, isCanonicalEcdsaDer } from "./csr.js";
export type { VerifiedCsr, VerifyCsrOptions, RequestedSans } from "./csr.js";
export {
  EDGETRUST_OID_ARC, OID_MODULE_ATTESTATION, ModuleAttestationAsn, moduleAttestationExtension, parseModuleAttestation,
  isModuleAttestationOid,
} from "./attestation.js";
export type { ModuleAttestation } from "./attestation.js";
export { URI_SCHEME, deviceUri, moduleUri, parseWorkloadUri, certificateIdentity, checkTrustDomain, checkId, checkDnsName } from "./identity.js";
export type { WorkloadIdentity } from "./identity.js";
export { keyAlgorithmOfSpki, toPublicKey, signingAlgorithmFor } from "./keys.js";
export type { PublicKeyInput } from "./keys.js";
export { wholeSeconds } from "./time.js";
