import "reflect-metadata";

export { EKU_CLIENT_AUTH, EKU_SERVER_AUTH, getProfile } from "./profiles.js";
export type { Profile, ProfileName } from "./profiles.js";
export { issueCertificate, issueCertificateDer, randomSerial } from "./issue.js";
export type { Issuer, SubjectFields, IdentityFields } from "./issue.js";
export { verifyCsr, refuseExtraSans } from "./csr.js";
export type { VerifiedCsr } from "./csr.js";
export { parseModuleAttestation } from "./attestation.js";
export type { ModuleAttestation } from "./attestation.js";
export { deviceUri, moduleUri, certificateIdentity } from "./identity.js";
export type { WorkloadIdentity } from "./identity.js";
export { signingAlgorithmFor } from "./keys.js";
export { wholeSeconds } from "./time.js";
