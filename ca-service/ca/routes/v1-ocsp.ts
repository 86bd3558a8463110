import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { respondOcsp } from "../../ocsp.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const GetParams = Type.Object({ "*": Type.String({ maxLength: 4096, description: "base64 (URL-encoded) DER OCSPRequest" }) });

/**
 * RFC 6960 OCSP: POST /v1/ocsp with `application/ocsp-request`, or GET /v1/ocsp/<url-encoded base64 request>
 * (Appendix A.1). Always answers 200 `application/ocsp-response`; errors are OCSP statuses, as relying parties expect.
 */
export const ocspRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, config, metrics }) => {
  app.addContentTypeParser("application/ocsp-request", { parseAs: "buffer", bodyLimit: 16384 }, (_req, body, done) => done(null, body));
  const answer = async (der: Uint8Array) => {
    const r = await respondOcsp(ca, der, config.ocspValidityMinutes);
    metrics.ocsp.inc({ outcome: r.outcome });
    return r.der;
  };
  app.post<{ Body: Buffer }>("/v1/ocsp", { config: { auth: "public" },
    schema: { summary: "OCSP request (POST, DER body)", tags: ["revocation"], consumes: ["application/ocsp-request"], produces: ["application/ocsp-response"] },
  }, async (req, reply) => {
    reply.type("application/ocsp-response");
    return answer(Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0));
  });
  app.get<{ Params: Static<typeof GetParams> }>("/v1/ocsp/*", { config: { auth: "public" },
    schema: { summary: "OCSP request (GET, base64 in the path)", tags: ["revocation"], params: GetParams, produces: ["application/ocsp-response"] },
  }, async (req, reply) => {
    reply.type("application/ocsp-response");
    const b64 = decodeURIComponent(req.params["*"]);
    return answer(/^[A-Za-z0-9+/=_-]*$/.test(b64) ? Buffer.from(b64, "base64") : Buffer.alloc(0));
  });
};
