import type { TLSSocket } from "node:tls";
import type { X509Certificate as NodeX509 } from "node:crypto";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { Type, type TSchema } from "@sinclair/typebox";
import { EdgeTrustError, type Problem } from "../common/index.js";
import type { CaStore, Principal, Role } from "./store.js";

/** RFC 9457 problem+json, the only error shape the service sends. */
export const ProblemSchema = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String(),
    hint: Type.Optional(Type.String()),
    instance: Type.Optional(Type.String()),
    errors: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  },
  { $id: "Problem", description: "RFC 9457 problem details" },
);

export const problemResponses = (...statuses: number[]): Record<number, TSchema> =>
  Object.fromEntries(statuses.map((s) => [s, Type.Ref("Problem")]));

export function sendProblem(reply: FastifyReply, err: EdgeTrustError, instance?: string): FastifyReply {
  const p: Problem = err.toProblem(instance);
  if (err.code === "UNAUTHENTICATED") reply.header("www-authenticate", 'Bearer realm="edgetrust-ca"');
  return reply.code(p.status).type("application/problem+json").serializer((x: unknown) => JSON.stringify(x)).send(p);
}

interface AjvLikeError {
  instancePath?: string;
  message?: string;
  keyword?: string;
  params?: Record<string, unknown>;
}

/** Turn a fastify schema-validation error into a 400 naming the precise field. */
function validationProblem(err: FastifyError & { validation?: AjvLikeError[]; validationContext?: string }): EdgeTrustError {
  const ctx = err.validationContext ?? "request";
  const problems = (err.validation ?? []).map((v) => {
    let field = `${ctx}${v.instancePath ?? ""}`;
    let message = v.message ?? v.keyword ?? "invalid";
    if (v.keyword === "required" && typeof v.params?.missingProperty === "string") {
      field = `${field}/${v.params.missingProperty}`;
      message = "is required";
    } else if (v.keyword === "additionalProperties" && typeof v.params?.additionalProperty === "string") {
      field = `${field}/${v.params.additionalProperty}`;
      message = "is not allowed";
    }
    return { field, message };
  });
  const first = problems[0];
  return new EdgeTrustError("INVALID_INPUT", first ? `${first.field}: ${first.message}` : err.message, { details: { problems } });
}

/** Map anything a route throws to problem+json; unexpected errors are logged and become a 500 problem, never bare. */
export function installProblemHandlers(app: FastifyInstance): void {
  app.addSchema(ProblemSchema);
  app.setErrorHandler((error: FastifyError & { validation?: AjvLikeError[]; validationContext?: string }, req, reply) => {
    let e: EdgeTrustError;
    if (error instanceof EdgeTrustError) e = error;
    else if (error.validation) e = validationProblem(error);
    else if (error.statusCode === 429) e = new EdgeTrustError("RATE_LIMITED", "rate limit exceeded", { hint: "retry later" });
    else if (error.code === "FST_ERR_CTP_BODY_TOO_LARGE") e = new EdgeTrustError("TOO_LARGE", error.message);
    else if (typeof error.statusCode === "number" && error.statusCode >= 400 && error.statusCode < 500) {
      e = new EdgeTrustError(error.statusCode === 404 ? "NOT_FOUND" : "INVALID_INPUT", error.message);
    } else {
      req.log.error({ err: error }, "unhandled error");
      e = new EdgeTrustError("INTERNAL", "internal error", { hint: `see the server log for request ${req.id}` });
    }
    if (e.status >= 500) req.log.error({ code: e.code, msg: e.message }, "request failed");
    return sendProblem(reply, e, req.url.split("?")[0]);
  });
  app.setNotFoundHandler((req, reply) => sendProblem(reply, new EdgeTrustError("NOT_FOUND", `no route ${req.method} ${req.url.split("?")[0]}`), req.url.split("?")[0]));
}

// ---- authentication -----------------------------------------------------------------------------------------

declare module "fastify" {
  interface FastifyRequest {
    principal?: Principal;
  }
}

/** The TLS client certificate of a request, if one was presented. */
export function peerCertificate(req: FastifyRequest): NodeX509 | undefined {
  const sock = req.raw.socket as Partial<TLSSocket>;
  if (typeof sock.getPeerX509Certificate !== "function") return undefined;
  return sock.getPeerX509Certificate() ?? undefined;
}

/**
 * Admin/auditor authentication: `Authorization: Bearer <token>` (looked up by its sha256; only hashes are stored),
 * or a TLS client certificate whose SHA-256 fingerprint is registered as a principal (the handshake proved the key).
 * A credential that is presented but unknown is a 401, never a fall-through to anonymous.
 */
export async function authenticate(store: CaStore, req: FastifyRequest): Promise<Principal | undefined> {
  const auth = req.headers.authorization;
  if (auth !== undefined) {
    const m = /^Bearer ([A-Za-z0-9._~+/=-]{16,256})$/.exec(auth);
    if (!m?.[1]) throw new EdgeTrustError("UNAUTHENTICATED", "malformed Authorization header", { hint: "send Authorization: Bearer <token>" });
    const p = await store.principalForToken(m[1]);
    if (!p) throw new EdgeTrustError("UNAUTHENTICATED", "unknown or revoked API token");
    return p;
  }
  const cert = peerCertificate(req);
  if (cert) {
    const now = Date.now();
    if (Date.parse(cert.validFrom) > now || Date.parse(cert.validTo) < now) return undefined;
    const fp = cert.fingerprint256.replace(/:/g, "").toLowerCase();
    return store.principalForCertificate(fp);
  }
  return undefined;
}

/** preHandler: the request must carry a credential of one of `roles`. */
export function requireRole(store: CaStore, ...roles: Role[]) {
  return async (req: FastifyRequest): Promise<void> => {
    const p = await authenticate(store, req);
    if (!p) throw new EdgeTrustError("UNAUTHENTICATED", "this route needs an admin or auditor credential", { hint: "send Authorization: Bearer <token> (edgetrust ca token create)" });
    if (!roles.includes(p.role)) throw new EdgeTrustError("FORBIDDEN", `role ${p.role} may not ${req.method} ${req.routeOptions.url ?? req.url}`, { hint: `needs role ${roles.join(" or ")}` });
    req.principal = p;
  };
}

export function actorOf(req: FastifyRequest): string {
  return req.principal ? `${req.principal.kind}:${req.principal.name}(${req.principal.id})` : "anonymous";
}

export const SecurityBearer = [{ bearer: [] as string[] }];
