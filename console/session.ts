import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { FastifyReply, FastifyRequest } from "fastify";
import { EdgeTrustError } from "../common/index.js";
import type { CaStore, Principal } from "../ca-service/index.js";

/**
 * Console sessions. The browser holds a random 256-bit id in a `__Host-` cookie (HttpOnly, Secure, SameSite=Strict,
 * Path=/, no Domain); the server stores only its sha256, the principal, a per-session CSRF token and an absolute
 * expiry. Rows live in the CA database, so several `ca serve` processes share sessions and a revoked principal's
 * sessions stop at once (the lookup joins the principal and requires it unrevoked).
 */
export const SESSION_COOKIE = "__Host-edgetrust-console";

export interface Session {
  principal: Principal;
  csrfToken: string;
  expiresAt: string;
}

const sha256 = (s: string): string => createHash("sha256").update(s).digest("hex");

export class SessionStore {
  constructor(private readonly store: CaStore, private readonly ttlSeconds: number, private readonly now: () => number = Date.now) {}

  /** Open a session for an authenticated principal; returns the cookie value (shown to nobody else). */
  async open(principal: Principal, method: "token" | "certificate"): Promise<{ id: string; session: Session }> {
    const id = randomBytes(32).toString("base64url");
    const csrfToken = randomBytes(32).toString("base64url");
    const t = this.now();
    const expiresAt = new Date(t + this.ttlSeconds * 1000).toISOString();
    await this.store.db.transaction(async (tx) => {
      // Expired rows go when someone signs in, so the table holds live sessions only (plus at most one TTL of dead ones).
      await tx.run("DELETE FROM console_sessions WHERE expires_at <= ?", [new Date(t).toISOString()]);
      await tx.run("INSERT INTO console_sessions (id_sha256, principal_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)", [
        sha256(id), principal.id, csrfToken, new Date(t).toISOString(), expiresAt,
      ]);
      await this.store.appendAudit(tx, { actor: actorOf(principal), action: "console.signin", target: principal.id, details: { method, expiresAt } });
    });
    return { id, session: { principal, csrfToken, expiresAt } };
  }

  async find(id: string | undefined): Promise<Session | undefined> {
    if (!id || !/^[A-Za-z0-9_-]{43}$/.test(id)) return undefined;
    const r = (await this.store.db.query<{ id: string; name: string; role: string; kind: string; csrf_token: string; expires_at: string }>(
      `SELECT p.id, p.name, p.role, p.kind, s.csrf_token, s.expires_at FROM console_sessions s JOIN principals p ON p.id = s.principal_id
       WHERE s.id_sha256 = ? AND p.revoked_at IS NULL`, [sha256(id)]))[0];
    if (!r || Date.parse(r.expires_at) <= this.now()) return undefined;
    return {
      principal: { id: r.id, name: r.name, role: r.role as Principal["role"], kind: r.kind as Principal["kind"] },
      csrfToken: r.csrf_token, expiresAt: r.expires_at,
    };
  }

  async close(id: string | undefined, principal: Principal): Promise<void> {
    if (!id) return;
    await this.store.db.transaction(async (tx) => {
      await tx.run("DELETE FROM console_sessions WHERE id_sha256 = ?", [sha256(id)]);
      await this.store.appendAudit(tx, { actor: actorOf(principal), action: "console.signout", target: principal.id });
    });
  }
}

/** The same actor text the JSON API writes (`token:ops(<id>)`), so the audit filters find both. */
export function actorOf(p: Principal): string {
  return `${p.kind}:${p.name}(${p.id})`;
}

export function setSessionCookie(reply: FastifyReply, id: string, ttlSeconds: number): void {
  reply.setCookie(SESSION_COOKIE, id, { httpOnly: true, secure: true, sameSite: "strict", path: "/", maxAge: ttlSeconds });
}

export function clearSessionCookie(reply: FastifyReply): void {
  reply.setCookie(SESSION_COOKIE, "", { httpOnly: true, secure: true, sameSite: "strict", path: "/", maxAge: 0 });
}

/**
 * A state-changing request must come from our own pages: the browser's Origin (or, failing that, Sec-Fetch-Site)
 * must name this origin. A request with neither is refused too (every browser we support sends one on POST).
 */
export function checkSameOrigin(req: FastifyRequest): void {
  const origin = req.headers.origin;
  const host = req.headers.host;
  if (typeof origin === "string" && origin !== "null") {
    if (host && origin === `https://${host}`) return;
    throw new EdgeTrustError("FORBIDDEN", `cross-origin request refused (Origin ${origin})`);
  }
  if (req.headers["sec-fetch-site"] === "same-origin") return;
  throw new EdgeTrustError("FORBIDDEN", "cross-site request refused: no same-origin Origin or Sec-Fetch-Site header");
}

/** The synchronizer token of the session must come back in the form (`_csrf`); compared in constant time. */
export function checkCsrf(session: Session, presented: unknown): void {
  const a = Buffer.from(session.csrfToken);
  const b = Buffer.from(typeof presented === "string" ? presented : "");
  if (a.length !== b.length || !timingSafeEqual(a, b)) throw new EdgeTrustError("FORBIDDEN", "missing or wrong CSRF token", { hint: "reload the page and submit the form again" });
}
