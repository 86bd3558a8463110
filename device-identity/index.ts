/** device-identity/: the device identity daemon — provisioning, renewal, Edge CA, workload + management sockets, attestation evidence. */
export { AttestedModules, AttestedModuleSchema } from "./attested-modules.js";
export type { AttestedModule, AttestedModuleInput } from "./attested-modules.js";
export { ModuleEventLog, LocalAttestationSource } from "./events.js";
export type { ModuleEvent } from "./events.js";
export { ManagementClient, ManagementAttestationSource } from "./management-client.js";
export type { ModuleView, EventsPage, RenewKind } from "./management-client.js";
export { startManagementApi } from "./management-api.js";
export type { ManagementBackend } from "./management-api.js";
export { WorkloadSockets, WORKLOAD_SOCKET_NAME } from "./workload-api.js";
export type { WorkloadBackend } from "./workload-api.js";
export { checkAttestedContainer } from "./container-check.js";
export type { ContainerVerdict } from "./container-check.js";
export { issueModuleCertificate } from "./module-issuer.js";
export type { EdgeCa, ModuleIssuerOptions } from "./module-issuer.js";
export { startEphemeralIdentity, makeEphemeralEdgeCa } from "./ephemeral.js";
export type { EphemeralIdentity, EphemeralIdentityOptions, EphemeralCa } from "./ephemeral.js";
