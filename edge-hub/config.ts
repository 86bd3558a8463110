import { Type, type Static } from "@sinclair/typebox";

/**
 * How often the hub asks its CRL source whether the CRL changed, by default. The question is a conditional GET with
 * the ETag of the CRL it holds (ca-service answers an empty 304 until a revocation changes the CRL; a file source is
 * compared by mtime and size), so asking every few seconds is cheap and a revoked leaf is cut off within about this.
 */
export const DEFAULT_CRL_POLL_SECONDS = 5;

/** `hub:` section of edgetrust.yaml. Keys given as `hsm:<label>` stay in the HSM (OpenSSL pkcs11 engine). */
export const HubConfig = Type.Object(
  {
    host: Type.String({ default: "127.0.0.1", description: "Address the MQTT/TLS listener binds (modules use the host's loopback)" }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8883, description: "MQTT over TLS port (8883: what the Azure device SDK dials)" }),
    trustDomain: Type.String({ default: "edgetrust.local", description: "Trust domain of client URI SANs: edgetrust://<trustDomain>/devices/..." }),
    serverCertFile: Type.String({ default: "/var/lib/edgetrust/hub/server.chain.pem", description: "Hub server certificate followed by the Edge CA (PEM); re-read on SIGHUP and when it changes" }),
    serverKey: Type.String({ default: "hsm:edge-hub-server", description: "Hub server key: hsm:<label> (stays in the HSM) or a PEM file path (development)" }),
    edgeCaFile: Type.String({ default: "/var/lib/edgetrust/identity/edge-ca.cert.pem", description: "This device's Edge CA certificate: modules must be issued by it" }),
    issuingCaFile: Type.String({ default: "/var/lib/edgetrust/identity/issuing-ca.cert.pem", description: "Cloud issuing CA certificate(s): leaf devices must be issued by it" }),
    trustBundleFile: Type.String({ default: "/var/lib/edgetrust/identity/trust-bundle.pem", description: "Root CA certificate(s) the TLS handshake chains client certificates to" }),
    crlSource: Type.String({ default: "", description: "CRL of the issuing CA: a file path or an http(s) URL (ca-service); empty = none" }),
    crlRequired: Type.Boolean({ default: false, description: "Refuse devices and modules while no CRL has ever been loaded (fail closed)" }),
    crlRefreshSeconds: Type.Integer({ minimum: 1, maximum: 86_400, default: DEFAULT_CRL_POLL_SECONDS, description: "How often the hub asks the CRL source whether the CRL changed (conditional GET with its ETag: a 304 until a revocation; a file by mtime+size); a new CRL re-checks every live connection" }),
    policyFile: Type.String({ default: "/etc/edgetrust/policy.yaml", description: "Policy file: hub publish/subscribe rules and privacy redaction" }),
    routesFile: Type.String({ default: "", description: "Accepted deployment manifest (payload JSON or JWS) or a {routes: {...}} file; empty = no routes" }),
    managementSocket: Type.String({ unixSocket: true, default: "/run/edgetrust/identity/mgmt.sock", description: "device-identity's management socket: which modules are attested now (followed by long poll); ignored when attestationFile is set" }),
    attestationFile: Type.String({ default: "", description: "Standalone mode only: JSON {deviceId: {module: {imageDigest, manifestVersion}}} of attested modules (device-identity provides this when it runs)" }),
    stateDir: Type.String({ default: "/var/lib/edgetrust/hub", description: "Outbox + twins (SQLite WAL), CRL cache and the privacy secret" }),
    maxPayloadBytes: Type.Integer({ minimum: 1, maximum: 268435455, default: 262144, description: "Largest message payload accepted" }),
    maxTopicLevels: Type.Integer({ minimum: 1, maximum: 100, default: 16, description: "Most `/`-separated levels in a topic or filter" }),
    allowRootWildcard: Type.Boolean({ default: false, description: "Allow filters that start with `#` or `+` (still subject to policy)" }),
    outboxMaxMessages: Type.Integer({ minimum: 1, default: 100000, description: "Outbox cap in messages: new messages are refused above it, never old ones dropped" }),
    outboxMaxBytes: Type.Integer({ minimum: 1024, default: 268435456, description: "Outbox cap in bytes" }),
    routePriority: Type.Integer({ minimum: 0, maximum: 9, default: 5, description: "Priority of routes not listed in routeOptions (0 = first)" }),
    routeTtlSeconds: Type.Integer({ minimum: 1, default: 86400, description: "Time to live in the outbox of routes not listed in routeOptions" }),
    routeOptions: Type.Record(Type.String(), Type.Object({
      priority: Type.Optional(Type.Integer({ minimum: 0, maximum: 9 })),
      ttlSeconds: Type.Optional(Type.Integer({ minimum: 1 })),
    }, { additionalProperties: false }), { default: {}, description: "Per route name: {priority, ttlSeconds}" }),
    upstreamUrl: Type.String({ default: "", description: "Cloud MQTT broker, mqtts://host:port; empty = no upstream" }),
    upstreamCertFile: Type.String({ default: "/var/lib/edgetrust/identity/device.chain.pem", description: "Device identity certificate chain for the upstream connection" }),
    upstreamKey: Type.String({ default: "hsm:device-identity", description: "Device identity key: hsm:<label> or a PEM file path (development)" }),
    upstreamCaFile: Type.String({ default: "/var/lib/edgetrust/identity/trust-bundle.pem", description: "CA certificate(s) the cloud broker's certificate chains to" }),
    upstreamTopicPrefix: Type.String({ default: "", description: "Prepended to topics sent upstream" }),
    upstreamPersistentSession: Type.Boolean({ default: true, description: "Keep the upstream MQTT session (clean session off, device id as client id, QoS 1 subscriptions): C2D, methods and desired patches sent while the hub is down are handed over when it reconnects" }),
    methodConnectWaitSeconds: Type.Integer({ minimum: 0, maximum: 300, default: 30, description: "A cloud direct method for a module or leaf that is not connected waits this long for it to connect before the hub answers 404 (IoT Hub's connectTimeoutInSeconds)" }),
    c2dTtlSeconds: Type.Integer({ minimum: 1, default: 3600, description: "Longest a cloud-to-device message waits in the hub for its device or module (shorter when its $.exp says so)" }),
    c2dMaxMessages: Type.Integer({ minimum: 1, default: 10000, description: "Cloud-to-device messages held at most; beyond it new ones are dropped with a warning" }),
    drainRatePerSecond: Type.Integer({ minimum: 1, default: 200, description: "Messages per second sent upstream while draining the outbox" }),
    maxInflight: Type.Integer({ minimum: 1, maximum: 65535, default: 50, description: "Upstream QoS 1 messages awaiting PUBACK at once" }),
    metricsPort: Type.Integer({ minimum: 0, maximum: 65535, default: 9601, description: "Loopback port of /metrics (Prometheus); 0 = off" }),
  },
  { additionalProperties: false, default: {}, description: "Edge hub (mTLS MQTT broker, routes, upstream outbox)" },
);
export type HubConfig = Static<typeof HubConfig>;
