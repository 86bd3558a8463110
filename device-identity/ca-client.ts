import { request, type RequestOptions } from "node:https";
import type { SecureContext, SecureContextOptions } from "node:tls";
import { EdgeTrustError, readProblem, type ErrorCode } from "../common/index.js";
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
export interface RegistrationResult {
  registrationId: string;
  deviceId: string;
  status: string;
  identity: { serial: string; notAfter: string; certificatePem: string; chainPem: string };
  edgeCa: { serial: string; notAfter: string; certificatePem: string; chainPem: string } | null;
  trustBundlePem: string;
}

export interface CaResponse<T> {
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

  private call<T>(
    method: string,
    path: string,
    body: unknown,
    opts: { headers?: Record<string, string>; client?: { certChainPem: string; key: TlsKeyOptions } } = {},
    as: "json" | "text" = "json",
  ): Promise<CaResponse<T>> {
    const url = new URL(path, this.baseUrl);
    const tlsOpts: SecureContextOptions = { ca: this.trust, ...(opts.client ? { cert: opts.client.certChainPem, ...opts.client.key } : {}) };
    const secureContext = createTlsSecureContext(tlsOpts);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    // tls.connect honours `secureContext` (the engine-backed one made above); @types/node omits it from RequestOptions.
    const reqOpts: RequestOptions & { secureContext: SecureContext } = {
      protocol: url.protocol, hostname: url.hostname, port: url.port, path: url.pathname + url.search, method,
      secureContext, agent: false, timeout: this.timeoutMs,
      headers: { ...(payload ? { "content-type": "application/json", "content-length": payload.length } : {}), ...(opts.headers ?? {}) },
    };
    return new Promise((resolve, reject) => {
      const req = request(
        reqOpts,
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", reject);
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            const status = res.statusCode ?? 0;
            const date = res.headers.date ? new Date(res.headers.date) : undefined;
            if (status >= 200 && status < 300) {
              try {
                resolve({ body: (as === "text" ? text : JSON.parse(text)) as T, date });
              } catch (e) {
                reject(new EdgeTrustError("DEVICE_ENROLL_FAILED", `CA answered ${method} ${path} with invalid JSON`, { cause: e }));
              }
              return;
            }
            const problem = readProblem(text);
            const code: ErrorCode = problem.code ?? "DEVICE_ENROLL_FAILED";
            reject(new EdgeTrustError(code, `CA refused ${method} ${path} (${status}): ${problem.detail ?? text.slice(0, 200)}`, {
              ...(problem.hint ? { hint: problem.hint } : {}),
              details: { status },
            }));
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      req.on("error", (e) => {
        reject(new EdgeTrustError("UNAVAILABLE", `CA at ${this.baseUrl} unreachable: ${e.message}`, { hint: "the device keeps serving with what it has and retries", cause: e }));
      });
      if (payload) req.write(payload);
      req.end();
    });
  }
}

/** 4xx answers (other than 408/429) will not change by retrying: the device must be told, not hammer the CA. */
export function isPermanentCaRefusal(e: unknown): boolean {
  if (!(e instanceof EdgeTrustError)) return false;
  const status = typeof e.details?.status === "number" ? e.details.status : undefined;
  return status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429;
}
