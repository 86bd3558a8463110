/** The enrollment API's internals that the CLI, the bench and tests use (components import ca-service/index.ts). */
export { EnrollmentStore, LINE_SCOPES } from "./store.js";
export type { ProvisioningLine, LineInput, LineScope, Writer, RegistrationRecord, ImportReport, ImportRow, ImportRowError } from "./store.js";
export { normalizeIndividual, normalizeGroup, checkRegistrationId, effectiveDnsNames, REGISTRATION_ID_PATTERN, ENROLLMENT_PROFILES, INDIVIDUAL_ATTESTATIONS, GROUP_ATTESTATIONS } from "./model.js";
export type { IndividualEnrollment, IndividualEnrollmentInput, EnrollmentGroup, EnrollmentGroupInput, EnrollmentProfile, IndividualAttestation, GroupAttestation, EnrollmentStatus } from "./model.js";
export { parseImport, rowsFromJson, detectFormat, parseCsvRecords, progressBar, CSV_COLUMNS } from "./import.js";
export { RegistrationService } from "./registration.js";
export type { RegisterInput, RegistrationCredential, RegistrationChannel, RegistrationResult, IssuedCertificate } from "./registration.js";
export { deriveDeviceKey, parseSas, verifySas } from "./credentials.js";
export { certsOnlyPkcs7, csrAttrsDer, EST_CERTS_TYPE } from "./est.js";
export { addEnrollmentCommands } from "./cli.js";
export { TpmChallenges, tpmRegistrationProof, parseTpmPublic, certifiedName, TPM_PROOF_LABEL } from "./tpm.js";
export type { TpmChallenge, TpmChallengeRequest, TpmProof, TpmPublic, TpmChallengeOptions } from "./tpm.js";
