import { Type } from "@sinclair/typebox";

/** The workload socket's wire schemas: one unix socket per attested module, mounted into that module's container only. */

export const WORKLOAD_SOCKET_NAME = "workload.sock";

export const CertificateRequest = Type.Object(
  { csr: Type.String({ minLength: 100, maxLength: 16_384, pattern: "^-----BEGIN CERTIFICATE REQUEST-----" }) },
  { additionalProperties: false },
);
export const CertificateResponse = Type.Object({
  certificate: Type.String(),
  chain: Type.Array(Type.String()),
  notAfter: Type.String(),
});
export const TrustBundleResponse = Type.Object({ certificates: Type.Array(Type.String()) });

/** IOTEDGE_MODULEGENERATIONID: what the agent gives a container, and what the IoT Edge routes' `{genid}` must be. */
export const GENERATION_ID_PATTERN = "^[a-z0-9]{8,32}$";

/**
 * The Azure IoT Edge workload API on the same socket (device-identity/iotedge-workload.ts): `?api-version=`, the
 * `/modules/{name}/genid/{genid}/…` path, the sign request, and the certificate request (iotedged's, plus `csr`).
 */
export const IotEdgeApiVersionQuery = Type.Object({ "api-version": Type.Optional(Type.String({ maxLength: 32 })) });
export const IotEdgeModuleParams = Type.Object(
  { name: Type.String({ pattern: "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" }), genid: Type.String({ pattern: GENERATION_ID_PATTERN }) },
  { additionalProperties: false },
);
export const IotEdgeSignRequest = Type.Object(
  {
    keyId: Type.String({ minLength: 1, maxLength: 32 }),
    algo: Type.String({ minLength: 1, maxLength: 32 }),
    data: Type.String({ minLength: 1, maxLength: 4096, pattern: "^[A-Za-z0-9+/]+={0,2}$" }),
  },
  { additionalProperties: false },
);
export const IotEdgeCertificateRequest = Type.Object(
  {
    commonName: Type.Optional(Type.String({ maxLength: 64 })),
    expiration: Type.Optional(Type.String({ maxLength: 64 })),
    csr: Type.Optional(Type.String({ minLength: 100, maxLength: 16_384, pattern: "^-----BEGIN CERTIFICATE REQUEST-----" })),
  },
  { additionalProperties: false },
);
