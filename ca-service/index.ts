/** ca-service/: the cloud CA — issuance, renewal, revocation (CRL, OCSP), audit, admin API. */
export { CaConfig } from "./config.js";
export { CaStore, REVOCATION_REASONS, normalizeSerial } from "./store.js";
export type { Principal, AuditEntry, RevocationReason } from "./store.js";
export { SqliteDb, PostgresDb } from "./db.js";
export { CertificateAuthority } from "./ca.js";
export type { ProfileOverrides } from "./ca.js";
export { initCa } from "./init.js";
export { createCaServer } from "./server.js";
export type { CaServer } from "./server.js";
export { authenticate, peerCertificate } from "./http.js";
export { authHook } from "./route-auth.js";
// Enrollment API (issue 4): provisioning lines, enrollments, bulk import, registration (JSON, EST, DPS-compatible).
export { EnrollmentStore, normalizeIndividual, parseImport } from "./enrollment/index.js";
// Fleet read models and queries (issue 16: the security console reads these).
export { FleetQueries } from "./fleet/index.js";
export type { FleetFilter, FleetRow, FleetStatus, DayCount, AuditFilter } from "./fleet/index.js";
export type { DeploymentRecord } from "./deployments/store.js";
export { DeploymentStore } from "./deployments/store.js";
export { AttestationVerifier, AttestationConfig, ReferenceValues, referencesFromPolicy, referencesFromConfig } from "./attestation/verifier.js";
