import { Type, type Static } from "@sinclair/typebox";
import { AttestationConfig } from "./attestation/config.js";

/** Group commit defaults; here (not in group-commit.ts) so that a daemon bundling every config section loads no CA store code. */
export const GROUP_COMMIT_DEFAULTS = { windowMs: 2, maxBatch: 256, maxInFlight: 1 } as const;

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
    workers: Type.Integer({
      minimum: 0,
      maximum: 256,
      default: 0,
      description: "ca serve worker processes sharing the HTTPS and revocation ports (each terminates TLS, checks CSRs, signs and writes the store); 0: one per core (os.availableParallelism()); 1: one process, no primary",
    }),
    groupCommit: Type.Object(
      {
        windowMs: Type.Integer({
          minimum: 0,
          maximum: 1000,
          default: GROUP_COMMIT_DEFAULTS.windowMs,
          description: "How long the first issued certificate of a batch waits for others before their one transaction starts (ms); certificates arriving while a batch is written go into the next without waiting; 0: the next event-loop turn",
        }),
        maxBatch: Type.Integer({
          minimum: 1,
          maximum: 1024,
          default: GROUP_COMMIT_DEFAULTS.maxBatch,
          description: "Issued certificates (with their audit entries) in one transaction at most; a full batch starts at once",
        }),
      },
      { additionalProperties: false, default: {}, description: "Group commit: issued certificates of concurrent requests recorded in one transaction; each answered only after its commit" },
    ),
    instanceId: Type.String({ default: "", maxLength: 128, description: "Name of this process in a fleet, sent as the x-edgetrust-instance response header; empty: <hostname>:<pid>" }),
    attestation: AttestationConfig,
    tpm: Type.Object(
      {
        manufacturerRoots: Type.Array(Type.String({ minLength: 1 }), {
          default: [],
          description: "PEM files of the TPM manufacturers' EK root CA certificates: a TPM enrollment's EK certificate must chain to one of them; empty (and allowUnverifiedEk false): TPM attestation is refused",
        }),
        allowUnverifiedEk: Type.Boolean({
          default: false,
          description: "Development only: accept a TPM whose EK has no certificate, or when no manufacturer roots are configured (a presented EK certificate is still checked against configured roots)",
        }),
      },
      { additionalProperties: false, default: {}, description: "TPM endorsement-key attestation" },
    ),
  },
  { additionalProperties: false, default: {}, description: "Cloud CA service (ca init / ca serve)" },
);
export type CaConfig = Static<typeof CaConfig>;
