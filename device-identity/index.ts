/** device-identity/: the device identity daemon — provisioning, renewal, Edge CA, workload + management sockets, attestation evidence. */
export { AttestedModules } from "./attested-modules.js";
export type { AttestedModuleInput } from "./attested-modules.js";
export { ModuleEventLog, LocalAttestationSource } from "./events.js";
export { startManagementApi } from "./management-api.js";
export { WorkloadSockets } from "./workload-api.js";
export { checkAttestedContainer } from "./container-check.js";
export { issueModuleCertificate } from "./module-issuer.js";
export type { EdgeCa } from "./module-issuer.js";
// The daemon: config, identity (provisioning, renewal), state on disk, CA client, attestation evidence.
export { DeviceConfig } from "./config.js";
export { identityFromConfig } from "./daemon.js";
export { splitPems } from "./state.js";
export { checkCaller } from "./peer.js";
export { SasKeys, sasSigner } from "./sas.js";
