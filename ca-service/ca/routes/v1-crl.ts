import { createHash } from "node:crypto";
import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { problemResponses } from "../../http.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const Params = Type.Object({ file: Type.String({ pattern: "^[0-9a-f]{8,128}\\.crl$", description: "<issuing CA id>.crl" }) });
const Headers = Type.Object({ "if-none-match": Type.Optional(Type.String({ maxLength: 1024, description: "the ETag of the CRL the client holds: 304 when it is still current" })) });

/** A strong ETag of the CRL bytes: a new CRL number (every revocation) or a re-signed CRL changes it. */
function crlEtag(der: Uint8Array): string {
  return `"${createHash("sha256").update(der).digest("base64url").slice(0, 32)}"`;
}

/** RFC 9110 If-None-Match: a list of entity tags or `*`; weak comparison (W/ prefix ignored). */
function matches(ifNoneMatch: string | undefined, etag: string): boolean {
  if (ifNoneMatch === undefined) return false;
  return ifNoneMatch.split(",").some((t) => {
    const v = t.trim();
    return v === "*" || v.replace(/^W\//, "") === etag;
  });
}

/**
 * GET /v1/crl/:issuerId.crl — the issuer's current CRL, DER (RFC 5280), public. It is also the cheap revocation
 * signal edge hubs poll every few seconds: with the ETag they hold, the answer is an empty 304 until a revocation
 * (or a re-signing) changes the CRL; `no-cache` makes every cache ask again.
 */
export const crlRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca }) => {
  app.get<{ Params: Static<typeof Params>; Headers: Static<typeof Headers> }>("/v1/crl/:file", { config: { auth: "public" },
    schema: { summary: "CRL of an issuing CA (DER); conditional with If-None-Match", tags: ["revocation"], params: Params, headers: Headers, produces: ["application/pkix-crl"], response: problemResponses(400, 404) },
  }, async (req, reply) => {
    const der = await ca.crl(req.params.file.replace(/\.crl$/, ""));
    const etag = crlEtag(der);
    reply.header("etag", etag).header("cache-control", "no-cache");
    if (matches(req.headers["if-none-match"], etag)) return reply.code(304).send();
    reply.type("application/pkix-crl");
    return der;
  });
};
