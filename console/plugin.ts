import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";
import cookie from "@fastify/cookie";
import formbody from "@fastify/formbody";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError, toProblemError } from "../common/index.js";
import { EnrollmentStore, FleetQueries, authHook, authenticate, normalizeSerial, peerCertificate, type RevocationReason } from "../ca-service/index.js";
import type { Html } from "./html.js";
import { html } from "./html.js";
import { page } from "./layout.js";
import { isAdmin, type ConsoleDeps, type PageContext } from "./context.js";
import { SESSION_COOKIE, SessionStore, actorOf, checkCsrf, checkSameOrigin, clearSessionCookie, setSessionCookie, type Session } from "./session.js";
import { fleetPage } from "./pages/fleet.js";
import { CONSOLE_REVOCATION_REASONS, devicePage } from "./pages/device.js";
import { auditPage, exportAudit } from "./pages/audit.js";
import { linesPage } from "./pages/lines.js";
import { deploymentsPage, rolloutPage } from "./pages/deployments.js";
import { policyPage } from "./pages/policy.js";
import { signinPage } from "./pages/signin.js";

/**
 * Strict CSP: only our own script and stylesheet files, no inline script or style, no framing, forms only to us.
 * Charts are inline SVG with presentation attributes, which CSP does not govern.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
  "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'",
].join("; ");

const STATIC_DIR = fileURLToPath(new URL("./static/", import.meta.url));
const staticFile = (name: string): string => {
  try {
    return readFileSync(`${STATIC_DIR}${name}`, "utf8");
  } catch {
    // Compiled to dist/: the static files stay beside the sources.
    return readFileSync(fileURLToPath(new URL(`../../console/static/${name}`, import.meta.url)), "utf8");
  }
};

const DeviceId = Type.String({ minLength: 1, maxLength: 128, pattern: "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$" });
const FleetQs = Type.Object({
  status: Type.Optional(Type.Union([Type.Literal(""), Type.Literal("affirming"), Type.Literal("warning"), Type.Literal("contraindicated"), Type.Literal("unknown")])),
  q: Type.Optional(Type.String({ maxLength: 128 })),
  expiring: Type.Optional(Type.Union([Type.Literal(""), Type.Integer({ minimum: 0, maximum: 3650 })])),
  line: Type.Optional(Type.String({ maxLength: 64 })),
  after: Type.Optional(Type.String({ maxLength: 128 })),
}, { additionalProperties: false });
const AuditQs = Type.Object({
  action: Type.Optional(Type.String({ maxLength: 64 })),
  actor: Type.Optional(Type.String({ maxLength: 128 })),
  target: Type.Optional(Type.String({ maxLength: 256 })),
  before: Type.Optional(Type.Union([Type.Literal(""), Type.Integer({ minimum: 1 })])),
  verify: Type.Optional(Type.String({ maxLength: 1 })),
  format: Type.Optional(Type.Union([Type.Literal("csv"), Type.Literal("jsonl")])),
}, { additionalProperties: false });
const RevokeBody = Type.Object({
  _csrf: Type.String({ maxLength: 128 }),
  serial: Type.String({ maxLength: 80, pattern: "^(all|[0-9a-fA-F:]{1,80})$" }),
  reason: Type.Union(CONSOLE_REVOCATION_REASONS.map((r) => Type.Literal(r))),
  confirm: Type.String({ maxLength: 128 }),
}, { additionalProperties: false });
const LineRevokeBody = Type.Object({ _csrf: Type.String({ maxLength: 128 }), confirm: Type.String({ maxLength: 128 }) }, { additionalProperties: false });
const CsrfBody = Type.Object({ _csrf: Type.String({ maxLength: 128 }) }, { additionalProperties: false });
const TokenBody = Type.Object({ token: Type.String({ minLength: 16, maxLength: 256 }) }, { additionalProperties: false });

const emptyToUndef = <T>(v: T | "" | undefined): T | undefined => (v === "" ? undefined : v);

declare module "fastify" {
  interface FastifyRequest {
    consoleSession?: Session;
  }
}

/**
 * The security console: server-rendered pages under /console on the CA's HTTPS listener. Read-mostly; the two
 * mutations (revoke a device's certificates, revoke a line credential) are admin-only, need the session's CSRF token
 * and a same-origin request, and go through the same CA code (audit, CRL) as the JSON API.
 */
export const consolePlugin: FastifyPluginAsync<ConsoleDeps> = async (app, deps) => {
  const now = deps.now ?? Date.now;
  const sessions = new SessionStore(deps.store, deps.console.sessionTtlSeconds, now);
  const queries = new FleetQueries(deps.store);
  const css = staticFile("console.css");
  const js = staticFile("console.js");
  await app.register(cookie);
  await app.register(formbody, { bodyLimit: 16_384 });

  app.addHook("onRequest", async (_req, reply) => {
    reply.header("content-security-policy", CONTENT_SECURITY_POLICY);
    reply.header("x-content-type-options", "nosniff");
    reply.header("referrer-policy", "no-referrer");
    reply.header("x-frame-options", "DENY");
    reply.header("cross-origin-opener-policy", "same-origin");
    reply.header("cache-control", "no-store");
  });

  const sendHtml = (reply: FastifyReply, body: Html, status = 200): FastifyReply => reply.code(status).type("text/html; charset=utf-8").send(body.text);

  app.setErrorHandler((error, req, reply) => {
    const e = toProblemError(error as Error, req);
    if (e.status >= 500) req.log.error({ code: e.code, msg: e.message }, "console request failed");
    if (e.status === 401) return reply.redirect("/console/signin", 303);
    if (e.retryAfterSeconds !== undefined) reply.header("retry-after", String(Math.ceil(e.retryAfterSeconds)));
    const title = e.status === 403 ? "Refused" : e.status === 404 ? "Not found" : e.status === 400 ? "Bad request" : "Error";
    return sendHtml(reply, page(title, req.consoleSession, "", html`<p class="error" role="alert" data-code="${e.code}">${e.status >= 500 ? "internal error (see the CA's log)" : e.message}</p><p><a href="/console/fleet">Back to the fleet</a></p>`), e.status);
  });

  /**
   * onRequest (before any body is read): a live session, else back to sign-in (saying so when a cookie was there but
   * is no longer valid). Marked as the route's authentication for ca-service's start-up check (route-auth.ts).
   */
  const signedIn = authHook(async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const cookieValue = req.cookies[SESSION_COOKIE];
    const s = await sessions.find(cookieValue);
    if (!s) {
      if (cookieValue) clearSessionCookie(reply);
      await reply.redirect(cookieValue ? "/console/signin?expired=1" : "/console/signin", 303);
      return;
    }
    req.consoleSession = s;
  }, "console session (admin or auditor)");
  /** onRequest for state changes, before the body is parsed: same origin, a session, the admin role. */
  const adminSession = authHook(async (req: FastifyRequest): Promise<void> => {
    checkSameOrigin(req);
    const s = await sessions.find(req.cookies[SESSION_COOKIE]);
    if (!s) throw new EdgeTrustError("UNAUTHENTICATED", "no console session");
    req.consoleSession = s;
    if (!isAdmin(s)) throw new EdgeTrustError("FORBIDDEN", `role ${s.principal.role} may not change anything`, { hint: "sign in with an admin credential" });
  }, "console session, role admin, same origin");
  /** preHandler (needs the parsed form): the session's CSRF token. */
  const csrf = async (req: FastifyRequest): Promise<void> => {
    if (!req.consoleSession) throw new EdgeTrustError("UNAUTHENTICATED", "no console session");
    checkCsrf(req.consoleSession, (req.body as { _csrf?: unknown } | undefined)?._csrf);
  };
  const ctx = (req: FastifyRequest): PageContext => {
    if (!req.consoleSession) throw new EdgeTrustError("UNAUTHENTICATED", "no console session");
    return { deps, queries, session: req.consoleSession, now: now() };
  };
  const hide = { hide: true };
  const pub = { auth: "public" as const };
  const bootstrap = { auth: "bootstrap" as const };

  app.get("/console/static/console.css", { schema: hide, config: pub }, async (_req, reply) => reply.type("text/css; charset=utf-8").header("cache-control", "public, max-age=300").send(css));
  app.get("/console/static/console.js", { schema: hide, config: pub }, async (_req, reply) => reply.type("text/javascript; charset=utf-8").header("cache-control", "public, max-age=300").send(js));
  app.get("/console", { schema: hide, config: pub }, async (_req, reply) => reply.redirect("/console/fleet", 303));

  // ---- sign-in ---------------------------------------------------------------------------------------------------

  app.get<{ Querystring: { expired?: string } }>("/console/signin", {
    config: pub,
    schema: { ...hide, querystring: Type.Object({ expired: Type.Optional(Type.String({ maxLength: 1 })) }, { additionalProperties: false }) },
  }, async (req, reply) => {
    const cert = peerCertificate(req);
    return sendHtml(reply, signinPage({ certificate: cert?.subject.replace(/\n/g, ", "), expired: req.query.expired === "1" }));
  });

  const startSession = async (reply: FastifyReply, principal: Session["principal"], method: "token" | "certificate"): Promise<FastifyReply> => {
    const { id } = await sessions.open(principal, method);
    setSessionCookie(reply, id, deps.console.sessionTtlSeconds);
    return reply.redirect("/console/fleet", 303);
  };

  app.post<{ Body: Static<typeof TokenBody> }>("/console/signin", { config: bootstrap, schema: { ...hide, body: TokenBody } }, async (req, reply) => {
    checkSameOrigin(req);
    // Exactly the API's token check (sha256 lookup, constant-time compare); only the token travels, once.
    req.headers.authorization = `Bearer ${req.body.token}`;
    let principal;
    try {
      principal = await authenticate(deps.store, req);
    } catch {
      principal = undefined;
    } finally {
      delete req.headers.authorization;
    }
    if (!principal || principal.kind !== "token") return sendHtml(reply, signinPage({ message: "unknown or revoked token" }), 401);
    return startSession(reply, principal, "token");
  });

  app.post("/console/signin/certificate", { config: bootstrap, schema: hide }, async (req, reply) => {
    checkSameOrigin(req);
    const principal = peerCertificate(req) ? await authenticate(deps.store, req) : undefined;
    if (!principal) return sendHtml(reply, signinPage({ message: "no registered admin or auditor client certificate was presented" }), 401);
    return startSession(reply, principal, "certificate");
  });

  app.post<{ Body: Static<typeof CsrfBody> }>("/console/signout", { config: pub, schema: { ...hide, body: CsrfBody } }, async (req, reply) => {
    checkSameOrigin(req);
    const id = req.cookies[SESSION_COOKIE];
    const s = await sessions.find(id);
    if (s) {
      checkCsrf(s, req.body._csrf);
      await sessions.close(id, s.principal);
    }
    clearSessionCookie(reply);
    return reply.redirect("/console/signin", 303);
  });

  // ---- pages -----------------------------------------------------------------------------------------------------

  app.get<{ Querystring: Static<typeof FleetQs> }>("/console/fleet", { onRequest: signedIn, schema: { ...hide, querystring: FleetQs } }, async (req, reply) => {
    const q = req.query;
    return sendHtml(reply, await fleetPage(ctx(req), {
      ...(emptyToUndef(q.status) ? { status: q.status as never } : {}), ...(q.q ? { q: q.q } : {}),
      ...(emptyToUndef(q.expiring) !== undefined ? { expiring: q.expiring as number } : {}), ...(q.line ? { line: q.line } : {}), ...(q.after ? { after: q.after } : {}),
    }));
  });

  app.get<{ Params: { id: string } }>("/console/devices/:id", { onRequest: signedIn, schema: { ...hide, params: Type.Object({ id: DeviceId }) } }, async (req, reply) => {
    const p = await devicePage(ctx(req), req.params.id);
    if (!p) throw new EdgeTrustError("NOT_FOUND", `no device ${req.params.id}`);
    return sendHtml(reply, p);
  });

  app.post<{ Params: { id: string }; Body: Static<typeof RevokeBody> }>("/console/devices/:id/revoke", {
    onRequest: adminSession, preHandler: csrf, schema: { ...hide, params: Type.Object({ id: DeviceId }), body: RevokeBody },
  }, async (req, reply) => {
    const c = ctx(req);
    const deviceId = req.params.id;
    if (req.body.confirm !== deviceId) throw new EdgeTrustError("INVALID_INPUT", "the confirmation does not match the device id: nothing was revoked");
    const good = (await c.queries.certificates(deviceId, 1000)).filter((x) => x.status === "good");
    const wanted = req.body.serial === "all" ? good : good.filter((x) => x.serial === normalizeSerial(req.body.serial));
    if (wanted.length === 0) throw new EdgeTrustError("NOT_FOUND", `device ${deviceId} has no such unrevoked certificate`);
    const actor = actorOf(c.session.principal);
    for (const cert of wanted) await deps.ca.revoke(cert.serial, req.body.reason as RevocationReason, actor);
    req.log.info({ deviceId, serials: wanted.map((x) => x.serial), reason: req.body.reason, actor }, "console revocation");
    const notice = html`<p class="notice" role="status" id="revoked-notice">Revoked ${wanted.length} certificate${wanted.length === 1 ? "" : "s"} (${req.body.reason}); the CRL was re-signed.</p>`;
    const p = await devicePage(c, deviceId, notice);
    if (!p) throw new EdgeTrustError("NOT_FOUND", `no device ${deviceId}`);
    return sendHtml(reply, p);
  });

  app.get("/console/lines", { onRequest: signedIn, schema: hide }, async (req, reply) => sendHtml(reply, await linesPage(ctx(req))));

  app.post<{ Params: { id: string }; Body: Static<typeof LineRevokeBody> }>("/console/lines/:id/revoke", {
    onRequest: adminSession, preHandler: csrf, schema: { ...hide, params: Type.Object({ id: Type.String({ format: "uuid" }) }), body: LineRevokeBody },
  }, async (req, reply) => {
    const c = ctx(req);
    const es = new EnrollmentStore(deps.store);
    const line = await es.getLine(req.params.id);
    if (!line) throw new EdgeTrustError("NOT_FOUND", `no provisioning line ${req.params.id}`);
    if (req.body.confirm !== line.name) throw new EdgeTrustError("INVALID_INPUT", "the confirmation does not match the line name: nothing was revoked");
    await es.revokeLine(line.id, actorOf(c.session.principal));
    return sendHtml(reply, await linesPage(c, html`<p class="notice" role="status">Line ${line.name} revoked: its credential is refused from now on.</p>`));
  });

  app.get("/console/deployments", { onRequest: signedIn, schema: hide }, async (req, reply) => sendHtml(reply, await deploymentsPage(ctx(req))));

  app.get<{ Params: { id: string; version: number }; Querystring: { after?: string } }>("/console/deployments/:id/:version", {
    onRequest: signedIn,
    schema: { ...hide, params: Type.Object({ id: Type.String({ maxLength: 128 }), version: Type.Integer({ minimum: 0 }) }), querystring: Type.Object({ after: Type.Optional(Type.String({ maxLength: 128 })) }, { additionalProperties: false }) },
  }, async (req, reply) => {
    const p = await rolloutPage(ctx(req), req.params.id, req.params.version, req.query.after);
    if (!p) throw new EdgeTrustError("NOT_FOUND", `no deployment ${req.params.id} v${req.params.version}`);
    return sendHtml(reply, p);
  });

  app.get<{ Querystring: Static<typeof AuditQs> }>("/console/audit", { onRequest: signedIn, schema: { ...hide, querystring: AuditQs } }, async (req, reply) => {
    const q = req.query;
    return sendHtml(reply, await auditPage(ctx(req), {
      ...(q.action ? { action: q.action } : {}), ...(q.actor ? { actor: q.actor } : {}), ...(q.target ? { target: q.target } : {}), ...(typeof q.before === "number" ? { before: q.before } : {}),
    }, q.verify === "1"));
  });

  app.get<{ Querystring: Static<typeof AuditQs> }>("/console/audit/export", { onRequest: signedIn, schema: { ...hide, querystring: AuditQs } }, async (req, reply) => {
    const q = req.query;
    const format = q.format ?? "jsonl";
    const filter = { ...(q.action ? { action: q.action } : {}), ...(q.actor ? { actor: q.actor } : {}), ...(q.target ? { target: q.target } : {}), ...(typeof q.before === "number" ? { before: q.before } : {}) };
    let out = "";
    for await (const line of exportAudit(ctx(req), filter, format)) out += line;
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    return reply.type(format === "csv" ? "text/csv; charset=utf-8" : "application/x-ndjson")
      .header("content-disposition", `attachment; filename="edgetrust-audit-${stamp}.${format === "csv" ? "csv" : "jsonl"}"`).send(out);
  });

  app.get("/console/policy", { onRequest: signedIn, schema: hide }, async (req, reply) => sendHtml(reply, await policyPage(ctx(req))));
};
