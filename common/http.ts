import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { EdgeTrustError, isEdgeTrustError, type ErrorCode } from "./errors.js";
import type { Logger } from "./log.js";

/**
 * Every HTTP surface answers failures as RFC 9457 problem+json, never a bare 500: schema failures name the field,
 * EdgeTrustErrors keep their code, anything unexpected is logged (without the request body) and answered generically.
 */
export function installProblemHandler(app: FastifyInstance, log: Logger): void {
  app.setErrorHandler((err: FastifyError | EdgeTrustError | Error, req: FastifyRequest, reply: FastifyReply) => {
    const e = asEdgeTrustError(err);
    if (e.status >= 500) log.error({ err: { message: err.message, code: e.code }, url: req.url, method: req.method }, "request failed");
    void reply.code(e.status).type("application/problem+json").send(e.toProblem(req.url.split("?")[0]));
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new EdgeTrustError("NOT_FOUND", `no route ${req.method} ${req.url.split("?")[0]}`);
    void reply.code(404).type("application/problem+json").send(e.toProblem(req.url.split("?")[0]));
  });
}

function asEdgeTrustError(err: FastifyError | EdgeTrustError | Error): EdgeTrustError {
  if (isEdgeTrustError(err)) return err;
  const fe = err as FastifyError;
  if (fe.validation) {
    const where = fe.validationContext ?? "body";
    const problems = fe.validation.map((v) => `${where}${v.instancePath || ""}: ${v.message ?? "invalid"}`);
    return new EdgeTrustError("INVALID_INPUT", problems.join("; "), { details: { problems } });
  }
  const status = fe.statusCode ?? 500;
  const byStatus: Record<number, ErrorCode> = { 400: "INVALID_INPUT", 401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND", 409: "CONFLICT", 413: "TOO_LARGE", 415: "INVALID_INPUT", 429: "RATE_LIMITED", 503: "UNAVAILABLE" };
  const code = byStatus[status];
  // Fastify's own 4xx errors (bad JSON, wrong content type, body too large) have safe, precise messages.
  if (code) return new EdgeTrustError(code, fe.message);
  return new EdgeTrustError("INTERNAL", "internal error; see the service log", { cause: err });
}
