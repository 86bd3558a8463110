/**
 * One error type for every component. `code` is stable (scripts and tests match on it); `message` says what went
 * wrong in one line; `hint` says what to do about it. HTTP layers map `status` to an RFC 9457 problem+json body.
 */
export const ErrorCodes = {
  // generic
  INVALID_INPUT: { status: 400, title: "Invalid input" },
  INVALID_CONFIG: { status: 500, title: "Invalid configuration" },
  NOT_FOUND: { status: 404, title: "Not found" },
  CONFLICT: { status: 409, title: "Conflict" },
  UNAUTHENTICATED: { status: 401, title: "Authentication required" },
  FORBIDDEN: { status: 403, title: "Forbidden" },
  TOO_LARGE: { status: 413, title: "Payload too large" },
  RATE_LIMITED: { status: 429, title: "Too many requests" },
  UNAVAILABLE: { status: 503, title: "Service unavailable" },
  CA_STORE_REFUSED: { status: 503, title: "CA store refused" },
  STORAGE_FULL: { status: 507, title: "Insufficient storage" },
  STORAGE_UNAVAILABLE: { status: 503, title: "Storage unavailable" },
  INTERNAL: { status: 500, title: "Internal error" },
  // hsm
  HSM_MODULE_NOT_FOUND: { status: 500, title: "PKCS#11 module not found" },
  HSM_MODULE_LOAD_FAILED: { status: 500, title: "PKCS#11 module could not be loaded" },
  HSM_TOKEN_NOT_FOUND: { status: 500, title: "HSM token not found" },
  HSM_PIN_INCORRECT: { status: 500, title: "HSM PIN incorrect" },
  HSM_PIN_LOCKED: { status: 500, title: "HSM PIN locked" },
  HSM_PIN_MISSING: { status: 500, title: "HSM PIN not configured" },
  HSM_KEY_NOT_FOUND: { status: 404, title: "Key not found" },
  HSM_KEY_EXISTS: { status: 409, title: "Key already exists" },
  HSM_MECHANISM_UNSUPPORTED: { status: 500, title: "Mechanism not supported by the token" },
  HSM_OPERATION_FAILED: { status: 500, title: "HSM operation failed" },
  KEYSTORE_SOFTWARE_PASSPHRASE: { status: 500, title: "Software key store passphrase incorrect or missing" },
  // pki
  PKI_INVALID_CSR: { status: 400, title: "Invalid certificate signing request" },
  PKI_PROFILE_VIOLATION: { status: 400, title: "Request violates the certificate profile" },
  PKI_CHAIN_INVALID: { status: 400, title: "Certificate chain invalid" },
  // policy, trust root, manifests
  POLICY_INVALID: { status: 400, title: "Policy file invalid" },
  POLICY_DENIED: { status: 403, title: "Denied by policy" },
  POLICY_TEST_FAILED: { status: 400, title: "Policy test cases failed" },
  TRUST_ROOT_INVALID: { status: 400, title: "Trust root invalid" },
  TRUST_ROOT_EXPIRED: { status: 400, title: "Trust root expired" },
  TRUST_ROOT_ROTATION_REJECTED: { status: 400, title: "Trust root rotation rejected" },
  MANIFEST_INVALID: { status: 400, title: "Deployment manifest invalid" },
  MANIFEST_TOO_LARGE: { status: 413, title: "Deployment manifest too large" },
  MANIFEST_REJECTED: { status: 400, title: "Deployment manifest failed verification" },
  MANIFEST_SIGN_FAILED: { status: 500, title: "Deployment manifest could not be signed" },
  MANIFEST_STATE_INVALID: { status: 500, title: "Manifest state file invalid" },
  // ca-service enrollment (provisioning lines, registration, EST, DPS)
  QUOTA_EXCEEDED: { status: 429, title: "Quota exceeded" },
  ENROLLMENT_DISABLED: { status: 403, title: "Enrollment disabled" },
  REGISTRATION_CONFLICT: { status: 409, title: "Registration conflicts with an earlier one" },
  IDEMPOTENCY_KEY_REUSED: { status: 422, title: "Idempotency key reused with a different request" },
  // edge-hub
  HUB_CLIENT_REJECTED: { status: 403, title: "Edge hub refused the client certificate" },
  HUB_NOT_AUTHORIZED: { status: 403, title: "Edge hub refused the topic" },
  HUB_CRL_INVALID: { status: 400, title: "CRL invalid" },
  HUB_ROUTE_INVALID: { status: 400, title: "Edge hub route invalid" },
  HUB_OUTBOX_FULL: { status: 507, title: "Edge hub outbox full" },
  HUB_METHOD_TIMEOUT: { status: 504, title: "Direct method timed out" },
  HUB_UPSTREAM_FAILED: { status: 502, title: "Edge hub upstream failed" },
  // device-identity
  DEVICE_NOT_PROVISIONED: { status: 503, title: "Device not provisioned" },
  DEVICE_STATE_INVALID: { status: 500, title: "Device identity state invalid" },
  DEVICE_CLOCK_INVALID: { status: 503, title: "Device clock is wrong" },
  DEVICE_ENROLL_FAILED: { status: 502, title: "Enrollment or renewal with the CA failed" },
  // attestation (ca-service verifier)
  ATTESTATION_NONCE_INVALID: { status: 400, title: "Attestation nonce unknown, used or expired" },
  ATTESTATION_EVIDENCE_INVALID: { status: 400, title: "Attestation evidence invalid" },
} as const satisfies Record<string, { status: number; title: string }>;

export type ErrorCode = keyof typeof ErrorCodes;

interface ErrorDetails {
  hint?: string;
  /** Structured, non-secret context (e.g. validation errors). Never put PINs, keys or tokens here. */
  details?: Record<string, unknown>;
  cause?: unknown;
  /** A transient failure: when to retry, in seconds (HTTP surfaces send it as `Retry-After`). */
  retryAfterSeconds?: number;
}

export class EdgeTrustError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ErrorCode, message: string, extra: ErrorDetails = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "EdgeTrustError";
    this.code = code;
    this.hint = extra.hint;
    this.details = extra.details;
    this.retryAfterSeconds = extra.retryAfterSeconds;
  }

  get status(): number {
    return ErrorCodes[this.code].status;
  }

  get title(): string {
    return ErrorCodes[this.code].title;
  }

  /** One line for a CLI: the reason, then what to do. */
  toLine(): string {
    return this.hint ? `${this.message} (${this.code}): ${this.hint}` : `${this.message} (${this.code})`;
  }

  /** RFC 9457 problem details. */
  toProblem(instance?: string): Problem {
    const p: Problem = {
      type: `urn:edgetrust:error:${this.code.toLowerCase().replace(/_/g, "-")}`,
      title: this.title,
      status: this.status,
      detail: this.message,
      code: this.code,
    };
    if (this.hint) p.hint = this.hint;
    if (instance) p.instance = instance;
    if (this.details) p.errors = this.details;
    return p;
  }
}

interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  hint?: string;
  instance?: string;
  errors?: Record<string, unknown>;
}

export function isEdgeTrustError(e: unknown, code?: ErrorCode): e is EdgeTrustError {
  return e instanceof EdgeTrustError && (code === undefined || e.code === code);
}

/** Wrap anything thrown into an EdgeTrustError without losing the original as `cause`. */
export function toEdgeTrustError(e: unknown, fallback: ErrorCode = "INTERNAL"): EdgeTrustError {
  if (e instanceof EdgeTrustError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new EdgeTrustError(fallback, message, { cause: e });
}

/** What a problem+json body from another edgetrust service says, as far as it can be read (anything else: nothing). */
export function readProblem(text: string): { code?: ErrorCode; detail?: string; hint?: string } {
  let p: unknown;
  try {
    p = JSON.parse(text);
  } catch {
    return {};
  }
  if (typeof p !== "object" || p === null) return {};
  const o = p as Record<string, unknown>;
  return {
    ...(typeof o.code === "string" && o.code in ErrorCodes ? { code: o.code as ErrorCode } : {}),
    ...(typeof o.detail === "string" ? { detail: o.detail } : {}),
    ...(typeof o.hint === "string" ? { hint: o.hint } : {}),
  };
}
