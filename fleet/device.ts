import { randomBytes } from "node:crypto";
import { Agent } from "node:https";
import * as x509 from "@peculiar/x509";
import { backoffDelay } from "../common/index.js";
import { call, codeOf, NetworkError, type Reply } from "./http.js";
import { countInto, type StepTimes } from "./stats.js";
import type { DeviceKey, DeviceKeySource } from "./keys.js";

/** What evidence a simulated device claims to measure (from the CA's reference values, so it appraises affirming). */
export interface Measurements {
  agent: string;
  policy: string;
  trustRoot: string;
  manifest: { digest: string; version: number };
  modules: Record<string, { imageDigest: string; manifestVersion: number }>;
}

/** Everything the devices of one run share. */
export interface SimContext {
  caUrl: string;
  rootPem: string;
  lineToken: string;
  adminToken?: string;
  /** Keep-alive pool for calls without a client certificate (line, registration). */
  pool: Agent;
  measurements: Measurements;
  /** Attest with the evidence checked by another process than the one that made the nonce (when several answer). */
  crossInstance: boolean;
  maxAttempts: number;
  /** Where each device's identity key lives (software by default, SoftHSM with --hsm). */
  keys: DeviceKeySource;
  times: StepTimes;
  /** Retried attempts by step and code (what chaos cost). */
  retries: Record<string, number>;
  /** The first answer's detail (or network error) of each retried step and code: what a retry count alone cannot say. */
  retryDetails: Record<string, string>;
  /** 503 answers without Retry-After, by step and code: a CA that cannot serve must say when to come back. */
  unavailableWithoutRetryAfter: Record<string, number>;
}

export interface DeviceOutcome {
  deviceId: string;
  registered: boolean;
  attestation?: string;
  /** Which processes made the nonce and checked the evidence. */
  nonceInstance?: string;
  verifyInstance?: string;
  deployment?: { deploymentId: string; version: number } | null;
  reported: boolean;
  renewed: boolean;
  revoked: boolean;
  refusedAsExpected: boolean;
  /** Serials this device was handed (identity, then its renewal): what the store must hold, once each. */
  serials: string[];
  error?: { step: string; code: string; detail: string };
}

class StepError extends Error {
  constructor(readonly step: string, readonly code: string, detail: string) {
    super(detail);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function retryable(r: Reply): boolean {
  // 5xx (a process going down, the database restarting), 429 (rate limit), 409 CONFLICT (a registration still being
  // processed, or abandoned by a killed process until it may be taken over).
  return r.status >= 500 || r.status === 429 || (r.status === 409 && codeOf(r) === "CONFLICT");
}

/** Run one request until it answers `ok`, retrying with exponential backoff (and jitter) what a fleet can heal from. */
async function attempt(ctx: SimContext, step: string, fn: () => Promise<Reply>, ok: (r: Reply) => boolean): Promise<Reply> {
  let last = "";
  let retryAfterMs = 0;
  for (let i = 0; i < ctx.maxAttempts; i++) {
    // Exponential backoff with jitter, never sooner than the CA's Retry-After.
    if (i > 0) await sleep(Math.max(backoffDelay(i - 1, { initialMs: 100, maxMs: 5_000 }), retryAfterMs) * (0.5 + Math.random()));
    retryAfterMs = 0;
    try {
      const r = await fn();
      if (ok(r)) return r;
      if (!retryable(r)) throw new StepError(step, codeOf(r), String(r.json.detail ?? r.json.title ?? `HTTP ${r.status}`));
      last = codeOf(r);
      ctx.retryDetails[`${step}:${last}`] ??= `HTTP ${r.status}${r.instance ? ` from ${r.instance}` : ""}: ${String(r.json.detail ?? r.json.title ?? "").slice(0, 300)}`;
      if (r.retryAfter !== undefined) retryAfterMs = Math.min(30_000, r.retryAfter * 1000);
      else if (r.status === 503) countInto(ctx.unavailableWithoutRetryAfter, `${step}:${last}`);
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
      last = e.code;
      ctx.retryDetails[`${step}:${last}`] ??= e.message.slice(0, 300);
    }
    countInto(ctx.retries, `${step}:${last}`);
  }
  throw new StepError(step, last || "UNKNOWN", `${step}: gave up after ${ctx.maxAttempts} attempts (last: ${last})`);
}

async function timed<T>(ctx: SimContext, step: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const out = await fn();
  ctx.times.add(step, performance.now() - t0);
  return out;
}

/** The device's URI SAN (edgetrust://<trust domain>/devices/<id>): what its evidence's `sub` must be. */
function deviceUri(certPem: string, deviceId: string): string {
  const san = new x509.X509Certificate(certPem).getExtension(x509.SubjectAlternativeNameExtension);
  return san?.names.items.find((n) => n.type === "url")?.value ?? `edgetrust://unknown/devices/${deviceId}`;
}

const pemBody = (pem: string) => pem.replace(/-----(BEGIN|END) [A-Z ]+-----/g, "").replace(/\s+/g, "");

/**
 * One device's whole life against the CA: enrolled by the provisioning line (its public key), registers, attests
 * (nonce → evidence signed by its identity key → EAR result), fetches its deployment and reports over mTLS, renews
 * (with the attestation result); `revoke`d devices are then revoked by the admin and must be refused.
 */
export async function deviceLife(ctx: SimContext, deviceId: string, revoke: boolean): Promise<DeviceOutcome> {
  const out: DeviceOutcome = { deviceId, registered: false, reported: false, renewed: false, revoked: false, refusedAsExpected: false, serials: [] };
  const agents: Agent[] = [];
  let key: DeviceKey | undefined;
  const mtls = async (certPem: string) => {
    const a = new Agent({ keepAlive: true, maxSockets: 1, ca: ctx.rootPem, cert: certPem, ...(await (key as DeviceKey).tls()) });
    agents.push(a);
    return a;
  };
  try {
    key = await ctx.keys.create(deviceId);
    const spki = key.spki;
    const csr = await key.csr(deviceId);

    await timed(ctx, "enroll", () => attempt(ctx, "enroll", () => call(ctx.pool, "PUT", `${ctx.caUrl}/v1/enrollments/${deviceId}`, {
      headers: { authorization: `Bearer ${ctx.lineToken}` }, body: { attestation: "publicKey", credential: spki, edgeCa: false },
    }), (r) => r.status === 200 || r.status === 201));

    const reg = await timed(ctx, "register", () => attempt(ctx, "register", () => call(ctx.pool, "PUT", `${ctx.caUrl}/v1/registrations/${deviceId}`, {
      headers: { "idempotency-key": `fleet-sim-${deviceId}` }, body: { csr },
    }), (r) => r.status === 200 || r.status === 201));
    const identity = reg.json.identity as { serial: string; certificatePem: string; chainPem: string };
    out.registered = true;
    out.serials.push(identity.serial);
    let device = await mtls(identity.chainPem);
    let certPem = identity.certificatePem;

    const result = await timed(ctx, "attest", () => attest(ctx, deviceId, device, certPem, key as DeviceKey, out));

    const dep = await timed(ctx, "deployment", () => attempt(ctx, "deployment", () => call(device, "GET", `${ctx.caUrl}/v1/device/deployment`), (r) => r.status === 200 || r.status === 204));
    out.deployment = dep.status === 200 ? { deploymentId: String(dep.json.deploymentId), version: Number(dep.json.version) } : null;

    const report = out.deployment
      ? { at: new Date().toISOString(), kind: "manifest-accepted", deviceId, deploymentId: out.deployment.deploymentId, version: out.deployment.version }
      : { at: new Date().toISOString(), kind: "last-known-good", deviceId };
    await timed(ctx, "report", () => attempt(ctx, "report", () => call(device, "POST", `${ctx.caUrl}/v1/device/reports`, {
      headers: { "idempotency-key": `fleet-sim-report-${deviceId}` }, body: report,
    }), (r) => r.status === 202));
    out.reported = true;

    const renewed = await timed(ctx, "renew", () => attempt(ctx, "renew", () => call(device, "POST", `${ctx.caUrl}/v1/renew`, {
      headers: { "x-edgetrust-attestation": result }, body: { csr },
    }), (r) => r.status === 200));
    out.renewed = true;
    out.serials.push(String(renewed.json.serial));
    certPem = String(renewed.json.certificatePem);
    device = await mtls(String(renewed.json.chainPem));

    if (revoke && ctx.adminToken) {
      const admin = ctx.adminToken;
      await timed(ctx, "revoke", () => attempt(ctx, "revoke", () => call(ctx.pool, "POST", `${ctx.caUrl}/v1/certificates/${String(renewed.json.serial)}/revoke`, {
        headers: { authorization: `Bearer ${admin}` }, body: { reason: "keyCompromise" },
      }), (r) => r.status === 200 || (r.status === 409 && codeOf(r) !== "CONFLICT")));
      out.revoked = true;
      // A revoked device is refused at once, by whichever process answers.
      const fetch = await timed(ctx, "refused", () => attempt(ctx, "refused", () => call(device, "GET", `${ctx.caUrl}/v1/device/deployment`), (r) => r.status < 500 && r.status !== 429));
      const again = await attempt(ctx, "refused", () => call(device, "POST", `${ctx.caUrl}/v1/renew`, { headers: { "x-edgetrust-attestation": result }, body: { csr } }), (r) => r.status < 500 && r.status !== 429);
      out.refusedAsExpected = fetch.status === 403 && again.status === 403;
      if (!out.refusedAsExpected) throw new StepError("refused", `HTTP_${fetch.status}/${again.status}`, "a revoked device was not refused");
    }
    return out;
  } catch (e) {
    out.error = e instanceof StepError ? { step: e.step, code: e.code, detail: e.message } : { step: "internal", code: "INTERNAL", detail: (e as Error).message };
    return out;
  } finally {
    for (const a of agents) a.destroy();
    await key?.dispose().catch(() => undefined);
  }
}

/** nonce → evidence → verify; the whole exchange again when a lost answer already consumed the nonce. */
async function attest(ctx: SimContext, deviceId: string, device: Agent, certPem: string, key: DeviceKey, out: DeviceOutcome): Promise<string> {
  for (let round = 0; ; round++) {
    const n = await attempt(ctx, "attest", () => call(device, "POST", `${ctx.caUrl}/v1/attestation/nonce`), (r) => r.status === 200);
    const nonce = String(n.json.nonce);
    const evidence = await key.signJws({ typ: "eat+jwt", x5c: [pemBody(certPem)] }, {
      eat_nonce: nonce, iat: Math.floor(Date.now() / 1000), sub: deviceUri(certPem, deviceId),
      eat_profile: "tag:edgetrust.dev,2026:evidence/v1", measurements: ctx.measurements,
    });
    const verifier = ctx.crossInstance ? await otherInstance(ctx, n.instance) : ctx.pool;
    try {
      const v = await attempt(ctx, "attest", () => call(verifier, "POST", `${ctx.caUrl}/v1/attestation/verify`, { body: { evidence } }),
        (r) => r.status === 200 || (r.status === 400 && codeOf(r) === "ATTESTATION_NONCE_INVALID"));
      if (v.status === 400) {
        if (round >= 4) throw new StepError("attest", "ATTESTATION_NONCE_INVALID", String(v.json.detail));
        countInto(ctx.retries, "attest:ATTESTATION_NONCE_INVALID");
        continue;
      }
      out.attestation = String(v.json.status);
      out.nonceInstance = n.instance;
      out.verifyInstance = v.instance;
      return String(v.json.result);
    } finally {
      if (verifier !== ctx.pool) verifier.destroy();
    }
  }
}

/**
 * A connection to another CA process than `instance`: open one, ask /healthz who answers, try again (a load balancer
 * spreads new connections) — the evidence then travels on that same keep-alive connection, to that process.
 */
async function otherInstance(ctx: SimContext, instance: string): Promise<Agent> {
  let a: Agent | undefined;
  for (let i = 0; i < 12; i++) {
    a = new Agent({ keepAlive: true, maxSockets: 1, ca: ctx.rootPem });
    try {
      const h = await call(a, "GET", `${ctx.caUrl}/healthz`, { timeoutMs: 10_000 });
      if (h.status === 200 && h.instance && h.instance !== instance) return a;
    } catch {
      // a process going down: try another connection
    }
    a.destroy();
    await sleep(20 + Math.random() * 30);
  }
  // One process only (or it keeps answering): same-process attestation, counted as such by the caller.
  return new Agent({ keepAlive: true, maxSockets: 1, ca: ctx.rootPem });
}

export const randomPrefix = (): string => `sim-${randomBytes(3).toString("hex")}`;
