import { Type, type Static } from "@sinclair/typebox";

/** `device:` section of edgetrust.yaml — the device identity daemon (`edgetrust device provision|run|status|attest`). */
export const DeviceConfig = Type.Object(
  {
    deviceId: Type.String({ default: "", description: "This device's id (its enrollment record at the CA); required" }),
    trustDomain: Type.String({ default: "edgetrust.local", description: "Trust domain of workload URIs: edgetrust://<trustDomain>/devices/<id>" }),
    hostName: Type.String({ default: "", description: "Extra DNS name of the edge hub server certificate (must be one of the device's enrolled names); empty = edgehub + localhost only" }),
    stateDir: Type.String({ default: "/var/lib/edgetrust/identity", description: "Certificates, trust bundle and the attested-module registry (see device-identity/README.md for the layout)" }),
    caUrl: Type.String({ default: "https://127.0.0.1:8443", description: "Base URL of ca-service (enrollment and renewal)" }),
    caTrustFile: Type.String({ default: "", description: "PEM bundle the CA's HTTPS certificate chains to, for the first contact; after provisioning the stored trust bundle is used" }),
    enrollment: Type.Union([Type.Literal("registration"), Type.Literal("admin")], {
      default: "registration",
      description: "How provisioning enrolls: registration = PUT /v1/registrations/<deviceId> of the enrollment API (publicKey enrollment, or Basic with the bootstrap secret); admin = POST /v1/certificates with an admin token (labs)",
    }),
    bootstrapTokenFile: Type.String({ default: "", description: "File holding the bootstrap secret (registration: the device's derived key, sent as HTTP Basic; admin: the API token); empty to use bootstrapTokenEnv" }),
    bootstrapTokenEnv: Type.String({ default: "EDGETRUST_BOOTSTRAP_TOKEN", description: "Environment variable holding the bootstrap secret when bootstrapTokenFile is empty (unset: a publicKey enrollment needs none)" }),
    keyAlgorithm: Type.Union([Type.Literal("EC-P256"), Type.Literal("EC-P384"), Type.Literal("RSA-2048"), Type.Literal("RSA-3072")], {
      default: "EC-P256",
      description: "Algorithm of the device, Edge CA and hub keys generated in the HSM",
    }),
    policyFile: Type.String({ default: "", description: "Policy file whose `certificates` section gives renewAt % and the module lifetime; empty = the values below" }),
    renewAtPercent: Type.Integer({ minimum: 1, maximum: 99, default: 70, description: "Renew device and Edge CA certificates when this % of their lifetime has passed (policy overrides)" }),
    moduleLifetimeSeconds: Type.Integer({ minimum: 300, maximum: 604800, default: 14400, description: "Lifetime of module certificates (policy `certificates.module.lifetime` overrides)" }),
    hubLifetimeSeconds: Type.Integer({ minimum: 3600, maximum: 31536000, default: 2592000, description: "Lifetime of the edge hub server certificate the Edge CA issues" }),
    rotateKeys: Type.Boolean({ default: true, description: "Renew the device identity, Edge CA and hub server certificates with a new HSM key (rekey; labels alternate <label> / <label>.1, see state.json); the old key is erased only after the new certificate is stored (the hub server key only at its next rotation: the hub signs with it until it reloads)" }),
    retryInitialSeconds: Type.Integer({ minimum: 1, maximum: 3600, default: 30, description: "First retry delay after a failed renewal (doubles each time, with ±20% jitter)" }),
    retryMaxSeconds: Type.Integer({ minimum: 1, maximum: 86400, default: 3600, description: "Longest delay between renewal retries" }),
    hsmRetrySeconds: Type.Integer({ minimum: 1, maximum: 3600, default: 5, description: "While the HSM is unavailable (at start or mid-run): first delay before trying to open it again (doubles each time)" }),
    hsmRetryMaxSeconds: Type.Integer({ minimum: 1, maximum: 86400, default: 60, description: "Longest delay between attempts to open an unavailable HSM" }),
    checkIntervalSeconds: Type.Integer({ minimum: 1, maximum: 86400, default: 3600, description: "How often the daemon re-checks whether a renewal is due (also after clock jumps)" }),
    requireAttestationForRenewal: Type.Boolean({ default: false, description: "Fetch a fresh attestation result from ca-service before each renewal and send it along (the CA may require it)" }),
    managementSocket: Type.String({ unixSocket: true, default: "/run/edgetrust/identity/mgmt.sock", description: "Root-only management socket (edge agent: register/deregister attested modules, status)" }),
    workloadDir: Type.String({ unixSocketUnder: "/<module>/workload.sock", default: "/run/edgetrust/modules", description: "Directory of the per-module workload sockets (<dir>/<module>/workload.sock)" }),
    dockerSocket: Type.String({ unixSocket: true, default: "/run/edgetrust/docker.sock", description: "Docker Engine API socket: containers are checked before a module certificate is issued" }),
    hubServerCertFile: Type.String({ default: "/var/lib/edgetrust/hub/server.chain.pem", description: "Where the edge hub server certificate chain is written (hub.serverCertFile reads it)" }),
    hubKeyLabel: Type.String({ default: "edge-hub-server", description: "HSM label of the edge hub server key (hub.serverKey: hsm:<label>)" }),
    measurements: Type.Object(
      {
        agentFile: Type.String({ default: "", description: "File whose sha256 is the agent measurement (e.g. the edgetrust build); empty = the code running the daemon: its bundle (dist/daemons/device.mjs) when it runs from one, else the entry script" }),
        policyFile: Type.String({ default: "/etc/edgetrust/policy.yaml", description: "Policy measured into attestation evidence" }),
        trustRootFile: Type.String({ default: "/etc/edgetrust/trust-root.json", description: "Trust root measured into attestation evidence" }),
        manifestFile: Type.String({ default: "/var/lib/edgetrust/agent/current.jws", description: "Accepted deployment manifest (the agent's last-known-good JWS) measured into attestation evidence (digest + version)" }),
      },
      { additionalProperties: false, default: {}, description: "Files whose digests go into attestation evidence" },
    ),
  },
  { additionalProperties: false, default: {}, description: "Device identity daemon (provisioning, renewal, Edge CA, workload and management sockets, attestation evidence)" },
);
export type DeviceConfig = Static<typeof DeviceConfig>;
