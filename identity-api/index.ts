/**
 * identity-api/: the contract between the device identity daemon and its clients on the device — the management and
 * workload sockets' wire schemas, a management client that validates every answer, and the AttestationSource the hub
 * reads. device-identity serves it; edge-agent and edge-hub use it; none of them imports another.
 */
export {
  AttestedModuleSchema, ModuleViewSchema, ModuleListSchema, ModuleEventSchema, EventsPageSchema, EventsQuery, NameParams, DeregisterQuery,
  RenewBody, RenewKindSchema, EvidenceBody, EvidenceResponse, ReportSchema, ModuleName, SasVerifyRequest, SasVerifyResponse,
} from "./management.js";
export type { AttestedModuleInput, ModuleView, ModuleEvent, EventsPage, RenewKind, SasVerifyAnswer } from "./management.js";
export { CertificateRequest, CertificateResponse, TrustBundleResponse, WORKLOAD_SOCKET_NAME } from "./workload.js";
export type { AttestationSource, AttestationEvent, ModuleAttestationState } from "./attestation.js";
export { ManagementClient, ManagementAttestationSource } from "./management-client.js";
