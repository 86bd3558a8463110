/** ca-service/: the cloud CA — issuance, renewal, revocation (CRL, OCSP), audit, admin API. */
export { CaConfig } from "./config.js";
export { CaStore, REVOCATION_REASONS, REVOCATION_REASON_CODES, normalizeSerial, auditHash, sha256Hex } from "./store.js";
export type {
  CaRecord, CertificateRecord, EnrollmentRecord, Principal, Role, AuditEntry, AuditInput, AuditVerifyResult, RevocationReason, NewCertificate,
} from "./store.js";
export { openDb, SqliteDb, PostgresDb } from "./db.js";
export type { Db, Queryable, OpenDbOptions } from "./db.js";
export { migrate, schemaVersion, MIGRATIONS } from "./migrations.js";
export type { Migration } from "./migrations.js";
export { CertificateAuthority, CA_PROFILES, resolveProfile, overridesFromPolicy, durationSeconds, POLICY_CERT_KINDS } from "./ca.js";
export type { CaProfileName, ProfileOverride, ProfileOverrides, CaOptions, IssueRequest, Issued, LoadedCa } from "./ca.js";
export { checkCsr } from "./csr.js";
export { respondOcsp } from "./ocsp.js";
export type { OcspOutcome, OcspResult } from "./ocsp.js";
export { initCa, rolloverIssuingCa } from "./init.js";
export type { InitCaOptions, InitCaResult, RolloverOptions } from "./init.js";
export { createCaServer } from "./server.js";
export type { CaServer, CaServerDeps } from "./server.js";
export { openCa, openCaStores, profileOverrides } from "./service.js";
export type { OpenCaOptions } from "./service.js";
export { authenticate, requireRole, installProblemHandlers, peerCertificate } from "./http.js";
export { authHook } from "./route-auth.js";
export type { AuthHook, DeclaredAuth } from "./route-auth.js";
export { caCommand } from "./cli.js";
// Enrollment API (issue 4): provisioning lines, enrollments, bulk import, registration (JSON, EST, DPS-compatible).
export {
  EnrollmentStore, RegistrationService, normalizeIndividual, parseImport, rowsFromJson, deriveDeviceKey, certsOnlyPkcs7, REGISTRATION_ID_PATTERN,
} from "./enrollment/index.js";
export type {
  ProvisioningLine, IndividualEnrollment, IndividualEnrollmentInput, EnrollmentGroup, EnrollmentGroupInput, ImportReport, RegisterInput,
  RegistrationCredential, RegistrationResult, IssuedCertificate,
} from "./enrollment/index.js";
/** The registration route contract for the device daemon: `PUT /v1/registrations/{registrationId}` with `Idempotency-Key`. */
export { RegistrationRequestBody, RegistrationResultSchema } from "./enrollment/routes/v1-enrollments-register.js";
export type { RegistrationRequest, DpsRegistrationPayload } from "./enrollment/contract.js";
// Fleet read models and queries (issue 16: the security console reads these).
export { FleetQueries, FLEET_STATUSES, recordAttestation, recordReport, failingClaims } from "./fleet/index.js";
export type { FleetFilter, FleetRow, FleetCounts, FleetStatus, AttestationStatus, DayCount, AttestationResultRow, RolloutRow, LineUsage, AuditFilter, FailingClaim, AppraisedClaim } from "./fleet/index.js";
export type { DeploymentRecord } from "./deployments/store.js";
export { DeploymentStore } from "./deployments/store.js";
export { AttestationVerifier, AttestationConfig, ReferenceValues, appraise, loadReferenceValues, referencesFromPolicy, referencesFromConfig, EAR_PROFILE } from "./attestation/verifier.js";
export type { EarStatus, ClaimAppraisal, References, AttestedManifest } from "./attestation/verifier.js";
