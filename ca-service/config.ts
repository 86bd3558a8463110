import { Type, type Static } from "@sinclair/typebox";
import { AttestationConfig } from "./attestation/config.js";

/** `ca:` section of edgetrust.yaml — the cloud CA service. */
export const CaConfig = Type.Object(
  {
    host: Type.String({ default: "127.0.0.1", description: "Address the HTTPS API listens on" }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8443, description: "HTTPS port (0 picks a free port)" }),
    revocationPort: Type.Integer({
      minimum: -1,
      maximum: 65535,
      default: 8080,
      description: "Plain-HTTP port serving only the CRL and OCSP (RFC 5280/6960 relying parties fetch these over http); -1 disables it",
    }),
    tlsCert: Type.String({ default: "", description: "PEM certificate chain of the HTTPS listener; empty: the issuing CA issues one at start" }),
    tlsKey: Type.String({ default: "", description: "PEM private key of the HTTPS listener; empty: generated in memory at start" }),
    serverNames: Type.Array(Type.String(), {
      default: ["localhost", "127.0.0.1"],
      description: "Host names and IPs of the self-issued HTTPS certificate (when tlsCert is empty)",
    }),
    databaseUrl: Type.String({ default: "", description: "postgres://... for PostgreSQL (scale-out); empty for the embedded SQLite store" }),
    databaseSchema: Type.String({ default: "public", description: "PostgreSQL schema holding the CA tables" }),
    sqlitePath: Type.String({ default: "/var/lib/edgetrust/ca.db", description: "SQLite database file (when databaseUrl is empty)" }),
    identityFile: Type.String({
      default: "",
      description: "File outside the database recording the CA's root fingerprint and store location, checked at every start (a missing, empty or different store is refused); empty: ca-identity.json beside the config file, else <sqlitePath>.identity.json",
    }),
    publicBaseUrl: Type.String({
      default: "http://127.0.0.1:8080",
      description: "Base URL written into certificates: <base>/v1/crl/<issuer>.crl (CRL DP) and <base>/v1/ocsp (OCSP AIA)",
    }),
    trustDomain: Type.String({ default: "edgetrust.local", description: "Trust domain of workload URIs: edgetrust://<trustDomain>/devices/<id>" }),
    renewAfterExpiryDays: Type.Integer({
      minimum: 0,
      maximum: 3650,
      default: 30,
      description: "How long after expiry a device may still renew with its old certificate (devices that were offline)",
    }),
    crlValidityHours: Type.Integer({ minimum: 1, maximum: 8760, default: 24, description: "CRL nextUpdate = thisUpdate + this" }),
    ocspValidityMinutes: Type.Integer({ minimum: 1, maximum: 10080, default: 60, description: "OCSP response nextUpdate = thisUpdate + this" }),
    policyFile: Type.String({ default: "", description: "Policy file whose `certificates` section sets lifetimes and key types; empty for built-in defaults" }),
    allowSoftwareKeys: Type.Boolean({
      default: false,
      description: "Allow CA keys in the development software key store (hsm.backend: software); refused otherwise",
    }),
    rateLimitPerMinute: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 6000, description: "Requests per minute per client IP" }),
    bodyLimitBytes: Type.Integer({ minimum: 1024, maximum: 10_485_760, default: 65536, description: "Largest request body accepted" }),
    instanceId: Type.String({ default: "", maxLength: 128, description: "Name of this process in a fleet, sent as the x-edgetrust-instance response header; empty: <hostname>:<pid>" }),
    attestation: AttestationConfig,
  },
  { additionalProperties: false, default: {}, description: "Cloud CA service (ca init / ca serve)" },
);
export type CaConfig = Static<typeof CaConfig>;
