import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { EdgeTrustError, isEdgeTrustError } from "./errors.js";
import type { Logger } from "./log.js";

/**
 * Every HTTP surface answers failures as RFC 9457 problem+json, never a bare 500: schema failures name the precise
 * field, EdgeTrustErrors keep their code, fastify's own 4xx keep their (safe) message, anything unexpected is logged
 * (without the request body) and answered generically.
 */
interface ProblemHandlerOptions {
  /** Realm of the `WWW-Authenticate: Bearer` challenge sent with 401s (token-authenticated APIs). */
  bearerRealm?: string;
  /** Where unexpected errors are logged; default the request's logger (silent when fastify runs without one). */
  log?: Logger;
}

interface AjvLikeError {
  instancePath?: string;
  message?: string;
  keyword?: string;
  params?: Record<string, unknown>;
}

type RouteError = FastifyError & { validation?: AjvLikeError[]; validationContext?: string };

/** A fastify schema-validation error as a 400 naming the precise field (`body/csr: is required`). */
function routeValidationProblem(err: RouteError): EdgeTrustError {
  return validationProblem(err.validationContext ?? "request", err.validation ?? [], err.message);
}

/** Schema-validation errors (ajv's) of one request part (`body`, `params`, `querystring`) as a 400 naming the field. */
export function validationProblem(ctx: string, errors: AjvLikeError[], fallback = `${ctx}: invalid`): EdgeTrustError {
  const problems = errors.map((v) => {
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
  const detail = problems.map((p) => `${p.field}: ${p.message}`).join("; ");
  return new EdgeTrustError("INVALID_INPUT", detail || fallback, { details: { problems } });
}

export function toProblemError(error: RouteError | EdgeTrustError | Error, req: FastifyRequest, log: Pick<Logger, "error"> = req.log): EdgeTrustError {
  if (isEdgeTrustError(error)) return error;
  const fe = error as RouteError;
  if (fe.validation) return routeValidationProblem(fe);
  if (fe.statusCode === 429) return new EdgeTrustError("RATE_LIMITED", "rate limit exceeded", { hint: "retry later" });
  if (fe.code === "FST_ERR_CTP_BODY_TOO_LARGE" || fe.statusCode === 413) return new EdgeTrustError("TOO_LARGE", fe.message);
  if (typeof fe.statusCode === "number" && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new EdgeTrustError(fe.statusCode === 404 ? "NOT_FOUND" : fe.statusCode === 401 ? "UNAUTHENTICATED" : fe.statusCode === 403 ? "FORBIDDEN" : "INVALID_INPUT", fe.message);
  }
  log.error({ err: { message: error.message, code: fe.code }, url: req.url.split("?")[0], method: req.method }, "unhandled error");
  return new EdgeTrustError("INTERNAL", "internal error", { hint: `see the service log for request ${req.id}` });
}

function sendProblem(reply: FastifyReply, err: EdgeTrustError, instance: string, opts: ProblemHandlerOptions = {}): FastifyReply {
  if (err.code === "UNAUTHENTICATED" && opts.bearerRealm) reply.header("www-authenticate", `Bearer realm="${opts.bearerRealm}"`);
  if (err.retryAfterSeconds !== undefined) reply.header("retry-after", String(Math.max(0, Math.ceil(err.retryAfterSeconds))));
  return reply.code(err.status).type("application/problem+json").serializer((x: unknown) => JSON.stringify(x)).send(err.toProblem(instance));
}

export function installProblemHandler(app: FastifyInstance, opts: ProblemHandlerOptions = {}): void {
  app.setErrorHandler((error: RouteError, req, reply) => {
    const log = opts.log ?? req.log;
    const e = toProblemError(error, req, log);
    if (e.status >= 500) log.error({ code: e.code, msg: e.message }, "request failed");
    return sendProblem(reply, e, req.url.split("?")[0] ?? "/", opts);
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split("?")[0] ?? "/";
    return sendProblem(reply, new EdgeTrustError("NOT_FOUND", `no route ${req.method} ${path}`), path, opts);
  });
}
