/** edge-hub/: the mTLS MQTT broker for attested modules and leaf devices, with routes and a durable upstream. */
export { EdgeHub } from "./hub.js";
export type { HubOptions, HubLimits, RouteOptions, Rejection, RejectionStage, HubRejectReason, HubEvents } from "./hub.js";
export { MemoryAttestationSource } from "./attestation.js";
export { ClientVerifier } from "./verify.js";
export type { ClientIdentity, RejectReason, VerifyResult, VerifierOptions } from "./verify.js";
export { CrlCache } from "./crl.js";
export { DEFAULT_CRL_POLL_SECONDS } from "./config.js";
export type { CrlOptions, RevocationStatus } from "./crl.js";
export { HubStore, mergePatch } from "./store.js";
export type { OutboxMessage, OutboxLimits, Twin } from "./store.js";
export { Upstream } from "./upstream.js";
export type { UpstreamOptions, UpstreamTls } from "./upstream.js";
export { parseRoute, parseRoutes, matchRoutes } from "./routes.js";
export type { Route, Sink, Source, RoutableMessage } from "./routes.js";
export { Redactor, loadOrCreateSecret } from "./privacy.js";
export { HubMetrics, serveMetrics } from "./metrics.js";
export { parseTopic, parsePropertyBag, formatPropertyBag } from "./dialect.js";
