import type { Static } from "@sinclair/typebox";
import type { RegistrationRequestBody } from "./routes/v1-enrollments-register.js";

/**
 * What a device (the device-identity daemon) sends to register: `PUT /v1/registrations/{registrationId}` with header
 * `Idempotency-Key: <8..128 printable ASCII>` (keep it for retries of the same attempt), body `{ csr, edgeCaCsr? }`
 * (PKCS#10 PEM: the device identity key and, when the enrollment issues one, the Edge CA key). Authenticate with the
 * bootstrap certificate as the TLS client certificate, `Authorization: Basic base64(registrationId:derivedKey)`, or
 * nothing but the CSR for a `publicKey` enrollment. 201: a `RegistrationResult`; 200: the same result replayed.
 * Errors: problem+json — 401 UNAUTHENTICATED, 403 ENROLLMENT_DISABLED, 409 REGISTRATION_CONFLICT (registered with
 * another key), 422 IDEMPOTENCY_KEY_REUSED, 400 PKI_INVALID_CSR / PKI_PROFILE_VIOLATION / INVALID_INPUT, 429.
 */
export type RegistrationRequest = Static<typeof RegistrationRequestBody>;

/** The DPS-compatible route carries the same request in `payload` (Azure SDK: `setProvisioningPayload`). */
export interface DpsRegistrationPayload {
  csr: string;
  edgeCaCsr?: string;
}
