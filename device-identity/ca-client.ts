import type { SecureContextOptions } from "node:tls";
import { EdgeTrustError, httpCall, refusal } from "../common/index.js";
import { createTlsSecureContext, type TlsKeyOptions } from "../hsm/index.js";

export interface Issued {
  serial: string;
  profile: string;
  notAfter: string;
  certificatePem: string;
  /** Leaf then issuing CA. */
  chainPem: string;
  issuerId: string;
}

/** What PUT /v1/registrations/:id answers (the fields the device uses). */
interface RegistrationResult {
  registrationId: string;
  deviceId: string;
  status: string;
  identity: { serial: string; notAfter: string; certificatePem: string; chainPem: string };
  edgeCa: { serial: string; notAfter: string; certificatePem: string; chainPem: string } | null;
  trustBundlePem: string;
}

interface CaResponse<T> {
  body: T;
  /** The CA's clock (HTTP Date header), to tell a wrong device clock from an expired certificate. */
  date: Date | undefined;
}

/**
 * HTTPS client of ca-service for the device: the trust bundle, enrollment (bootstrap token) and renewal (mTLS with the
 * current certificate, whose key stays in the HSM: the TLS key source hands the engine a key reference).
 */
export class CaClient {
  constructor(
    readonly baseUrl: string,
    /** PEM certificates the CA's HTTPS certificate must chain to. */
    private readonly trust: string[],
    private readonly timeoutMs = 20_000,
  ) {}

  async trustBundle(): Promise<CaResponse<string>> {
    return this.call<string>("GET", "/v1/cas/bundle.pem", undefined, {}, "text");
  }

  /** Issue with the bootstrap token (admin enrollment route). */
  async enroll(token: string, body: { csr: string; profile: "device-identity" | "edge-ca"; deviceId: string }): Promise<CaResponse<Issued>> {
    return this.call<Issued>("POST", "/v1/certificates", body, { headers: { authorization: `Bearer ${token}` } });
  }

  /**
   * Register through the enrollment API (PUT /v1/registrations/:id). The same idempotency key with the same CSRs
   * replays the stored result, so a device that lost the answer (or crashed) asks again safely.
   */
  async register(registrationId: string, idempotencyKey: string, body: { csr: string; edgeCaCsr: string }, basicSecret?: string): Promise<CaResponse<RegistrationResult>> {
    const headers: Record<string, string> = { "idempotency-key": idempotencyKey };
    if (basicSecret) headers.authorization = `Basic ${Buffer.from(`${registrationId}:${basicSecret}`).toString("base64")}`;
    return this.call<RegistrationResult>("PUT", `/v1/registrations/${encodeURIComponent(registrationId)}`, body, { headers });
  }

  /** Renew (or rekey: a new key in the CSR) by presenting the certificate held now as the TLS client certificate. */
  async renew(client: { certChainPem: string; key: TlsKeyOptions }, body: { csr: string; hostName?: string; attestationResult?: string }): Promise<CaResponse<Issued & { rekey: boolean; replaces: string }>> {
    const { attestationResult, ...rest } = body;
    return this.call("POST", "/v1/renew", rest, {
      client,
      ...(attestationResult ? { headers: { "x-edgetrust-attestation": attestationResult } } : {}),
    });
  }

  /** Any JSON route (attestation nonce/verify). */
  async json<T>(method: string, path: string, body?: unknown): Promise<CaResponse<T>> {
    return this.call<T>(method, path, body);
  }

  private async call<T>(
    method: string,
    path: string,
    body: unknown,
    opts: { headers?: Record<string, string>; client?: { certChainPem: string; key: TlsKeyOptions } } = {},
    as: "json" | "text" = "json",
  ): Promise<CaResponse<T>> {
    const tlsOpts: SecureContextOptions = { ca: this.trust, ...(opts.client ? { cert: opts.client.certChainPem, ...opts.client.key } : {}) };
    const a = await httpCall({
      method, url: new URL(path, this.baseUrl), body, timeoutMs: this.timeoutMs,
      ...(opts.headers ? { headers: opts.headers } : {}),
      // A fresh connection per request: the client certificate (and its engine-held key) changes with renewals.
      tls: { secureContext: createTlsSecureContext(tlsOpts), agent: false },
      peer: `CA at ${this.baseUrl}`, unreachableHint: "the device keeps serving with what it has and retries",
    });
    if (a.status >= 200 && a.status < 300) {
      try {
        return { body: (as === "text" ? a.text : JSON.parse(a.text)) as T, date: a.date };
      } catch (e) {
        throw new EdgeTrustError("DEVICE_ENROLL_FAILED", `CA answered ${method} ${path} with invalid JSON`, { cause: e });
      }
    }
    throw refusal(a, { fallback: () => "DEVICE_ENROLL_FAILED", message: (detail) => `CA refused ${method} ${path} (${a.status}): ${detail ?? a.text.slice(0, 200)}` });
  }
}

/** 4xx answers (other than 408/429) will not change by retrying: the device must be told, not hammer the CA. */
export function isPermanentCaRefusal(e: unknown): boolean {
  if (!(e instanceof EdgeTrustError)) return false;
  const status = typeof e.details?.status === "number" ? e.details.status : undefined;
  return status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429;
}
