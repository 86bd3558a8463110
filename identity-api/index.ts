/**
 * identity-api/: the contract between the device identity daemon and its clients on the device — the management and
 * workload sockets' wire schemas, a management client that validates every answer, and the AttestationSource the hub
 * reads. device-identity serves it; edge-agent and edge-hub use it; none of them imports another.
 */
export {
  AttestedModuleSchema, ModuleViewSchema, ModuleListSchema, EventsPageSchema, EventsQuery, NameParams,
  DeregisterQuery, RenewBody, EvidenceBody, EvidenceResponse, SasVerifyRequest, SasVerifyResponse,
} from "./management.js";
export type { AttestedModuleInput, ModuleEvent, RenewKind, SasVerifyAnswer } from "./management.js";
export {
  CertificateRequest, CertificateResponse, TrustBundleResponse, WORKLOAD_SOCKET_NAME, GENERATION_ID_PATTERN, IotEdgeApiVersionQuery, IotEdgeModuleParams,
  IotEdgeSignRequest, IotEdgeCertificateRequest,
} from "./workload.js";
export type { AttestationSource, AttestationEvent, ModuleAttestationState } from "./attestation.js";
export { ManagementClient, ManagementAttestationSource } from "./management-client.js";
/** The request validators compiled at build time (scripts/wire-validators.mjs) and the answers' shapes: the daemon's side. */
export {
  attestedModuleBody, nameParams, deregisterQuery, eventsQuery, renewBody, evidenceBody, sasVerifyBody, certificateBody, iotEdgeApiVersionQuery,
  iotEdgeModuleParams, iotEdgeSignBody, iotEdgeCertificateBody, answerShapes,
} from "./wire-validators.js";
export type { WireValidator } from "./wire-validators.js";
