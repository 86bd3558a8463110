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
