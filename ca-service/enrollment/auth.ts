import type { FastifyRequest } from "fastify";
import type { RateLimitOptions } from "@fastify/rate-limit";
import { EdgeTrustError } from "../../common/index.js";
import { authenticate, peerCertificate, refuseTwoCredentials } from "../http.js";
import { sha256Hex, type CaStore } from "../store.js";
import { authHook, type AuthHook } from "../route-auth.js";
import type { EnrollmentStore, LineScope, ProvisioningLine, Writer } from "./store.js";

declare module "fastify" {
  interface FastifyRequest {
    /** Who writes enrollments on this request: an admin (lineId null) or a provisioning line. */
    writer?: Writer & { line?: ProvisioningLine };
  }
}

const BEARER_RE = /^Bearer ([A-Za-z0-9._~+/=-]{16,256})$/;

/**
 * Provisioning-line routes accept a line credential (`Authorization: Bearer etl_...`, or a line client certificate)
 * or an admin credential. A presented but unknown or revoked credential is a 401, never anonymous. Lines need the
 * scope; admins may do everything, auditors may read.
 */
export function requireLine(store: CaStore, enrollments: EnrollmentStore, scope: LineScope): AuthHook {
  return authHook(async (req: FastifyRequest): Promise<void> => {
    const auth = req.headers.authorization;
    refuseTwoCredentials(req);
    let line: ProvisioningLine | undefined;
    if (auth !== undefined) {
      const m = BEARER_RE.exec(auth);
      if (!m?.[1]) throw new EdgeTrustError("UNAUTHENTICATED", "malformed Authorization header", { hint: "send Authorization: Bearer <line token>" });
      if (m[1].startsWith("etl_")) {
        line = await enrollments.lineForToken(m[1]);
        if (!line) throw new EdgeTrustError("UNAUTHENTICATED", "unknown or revoked provisioning line token");
      }
    } else {
      const cert = peerCertificate(req);
      if (cert) line = await enrollments.lineForCertificate(cert.fingerprint256.replace(/:/g, ""));
    }
    // req.writer is set as soon as the caller is known, so a refusal below is audited under its name.
    if (line) {
      req.writer = { actor: `line:${line.name}(${line.id})`, lineId: line.id, line };
      if (!line.scopes.includes(scope) && !(scope === "read" && line.scopes.includes("enroll"))) {
        throw new EdgeTrustError("FORBIDDEN", `provisioning line ${line.name} lacks the ${scope} scope`);
      }
      return;
    }
    const p = await authenticate(store, req);
    if (!p) throw new EdgeTrustError("UNAUTHENTICATED", "this route needs a provisioning line or admin credential", { hint: "send Authorization: Bearer <token> (edgetrust ca line create)" });
    req.writer = { actor: `${p.kind}:${p.name}(${p.id})`, lineId: null };
    if (p.role !== "admin" && scope !== "read") throw new EdgeTrustError("FORBIDDEN", `role ${p.role} may not change enrollments`);
  }, `line scope ${scope} or admin`);
}

/** The rate-limit key of a request: its bearer token's hash, else its client certificate, else its address. */
function credentialKey(req: FastifyRequest): string {
  const m = BEARER_RE.exec(req.headers.authorization ?? "");
  if (m?.[1]) return `tok:${sha256Hex(m[1])}`;
  const cert = peerCertificate(req);
  if (cert) return `cert:${cert.fingerprint256.replace(/:/g, "").toLowerCase()}`;
  return `ip:${req.ip}`;
}

/**
 * @fastify/rate-limit settings for line routes: one counter per credential across every line route (groupId), with
 * the line's own per-minute limit; admins and unknown callers get `fallbackPerMinute`. Exceeding it is a 429
 * problem+json (the service's error handler maps the plugin's error).
 */
export function lineRateLimit(enrollments: EnrollmentStore, fallbackPerMinute: number): RateLimitOptions {
  const cache = new Map<string, { max: number; at: number }>();
  return {
    groupId: "provisioning-line",
    timeWindow: 60_000,
    keyGenerator: credentialKey,
    max: async (req: FastifyRequest, key: string): Promise<number> => {
      const hit = cache.get(key);
      if (hit && Date.now() - hit.at < 5_000) return hit.max;
      let max = fallbackPerMinute;
      const m = BEARER_RE.exec(req.headers.authorization ?? "");
      if (m?.[1]?.startsWith("etl_")) max = (await enrollments.lineForToken(m[1]))?.ratePerMinute ?? fallbackPerMinute;
      else if (key.startsWith("cert:")) max = (await enrollments.lineForCertificate(key.slice(5)))?.ratePerMinute ?? fallbackPerMinute;
      if (cache.size > 10_000) cache.clear();
      cache.set(key, { max, at: Date.now() });
      return max;
    },
  };
}

export function writerOf(req: FastifyRequest): Writer {
  if (!req.writer) throw new EdgeTrustError("INTERNAL", "route has no writer (missing preHandler)");
  return { actor: req.writer.actor, lineId: req.writer.lineId };
}
