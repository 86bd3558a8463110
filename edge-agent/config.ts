import { Type, type Static } from "@sinclair/typebox";

/** `agent:` section of edgetrust.yaml. */
export const AgentConfig = Type.Object(
  {
    deviceId: Type.String({ default: "", description: "This device's id (manifests must target it); empty = read from the device identity state" }),
    policyFile: Type.String({ default: "/etc/edgetrust/policy.yaml", description: "Policy file (its trust section names the manifest signers)" }),
    stateDir: Type.String({ default: "/var/lib/edgetrust/agent", description: "Last-known-good manifest and the accepted-version state" }),
    manifestFile: Type.String({ default: "", description: "Apply this signed manifest file at start when newer than the accepted one (offline source)" }),
    dockerSocket: Type.String({ unixSocket: true, default: "/run/edgetrust/docker.sock", description: "Docker Engine API socket" }),
    managementSocket: Type.String({ unixSocket: true, default: "/run/edgetrust/identity/mgmt.sock", description: "device-identity management socket (root-only)" }),
    workloadSocketsDir: Type.String({ unixSocketUnder: "/<module>/workload.sock", default: "/run/edgetrust/modules", description: "device-identity's per-module workload socket directories" }),
    superviseIntervalMs: Type.Integer({ minimum: 200, maximum: 600_000, default: 2000, description: "How often containers are checked against the manifest" }),
    restartBackoffMs: Type.Integer({ minimum: 0, maximum: 600_000, default: 1000, description: "First restart delay; doubles per consecutive restart" }),
    restartBackoffMaxMs: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 60_000, description: "Restart delay cap" }),
    cloudUrl: Type.String({ default: "", description: "ca-service base URL to fetch deployments from and report to over mTLS; empty = offline (files only)" }),
    cloudCaFile: Type.String({ default: "/var/lib/edgetrust/identity/trust-bundle.pem", description: "Roots that authenticate ca-service" }),
    deviceCertFile: Type.String({ default: "/var/lib/edgetrust/identity/device.pem", description: "Device identity certificate (TLS client certificate to the cloud)" }),
    deviceKey: Type.String({ default: "hsm:device-identity", description: "Device key for TLS: hsm:<label> (stays in the token, hsm section) or a PEM file (development)" }),
    pollIntervalMs: Type.Integer({ minimum: 1000, maximum: 86_400_000, default: 60_000, description: "How often the cloud is asked for a newer deployment" }),
    iotHubHostName: Type.String({ default: "edgetrust.local", minLength: 1, maxLength: 255, description: "IOTEDGE_IOTHUBHOSTNAME for modules granted auth: sas (the host in their SAS tokens and MQTT user names)" }),
    gatewayHostName: Type.String({ default: "localhost", minLength: 1, maxLength: 255, description: "IOTEDGE_GATEWAYHOSTNAME for modules granted auth: sas: where they reach the hub on port 8883 (a name on the hub's certificate)" }),
    reportQueueFile: Type.String({ default: "/var/lib/edgetrust/agent/reports.jsonl", description: "Reports queued here while the cloud is unreachable" }),
  },
  { additionalProperties: false, default: {}, description: "Edge agent (attested boot flow)" },
);
export type AgentConfig = Static<typeof AgentConfig>;
