/** edge-hub/: the mTLS MQTT broker for attested modules and leaf devices, with routes and a durable upstream. */
export { EdgeHub } from "./hub.js";
export type { Rejection } from "./hub.js";
export { MemoryAttestationSource } from "./attestation.js";
export { ClientVerifier } from "./verify.js";
export type { ClientIdentity } from "./verify.js";
export { CrlCache } from "./crl.js";
export { DEFAULT_CRL_POLL_SECONDS } from "./config.js";
export { HubStore } from "./store.js";
export { Upstream } from "./upstream.js";
export { parseRoutes } from "./routes.js";
export { Redactor, loadOrCreateSecret } from "./privacy.js";
