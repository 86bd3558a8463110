import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { problemResponses } from "../http.js";
import type { RouteDeps } from "./types.js";

const Params = Type.Object({ file: Type.String({ pattern: "^[0-9a-f]{8,128}\\.crl$", description: "<issuing CA id>.crl" }) });

/** GET /v1/crl/:issuerId.crl — the issuer's current CRL, DER (RFC 5280), public. */
export const crlRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca }) => {
  app.get<{ Params: Static<typeof Params> }>("/v1/crl/:file", { config: { auth: "public" },
    schema: { summary: "CRL of an issuing CA (DER)", tags: ["revocation"], params: Params, produces: ["application/pkix-crl"], response: problemResponses(400, 404) },
  }, async (req, reply) => {
    const der = await ca.crl(req.params.file.replace(/\.crl$/, ""));
    reply.type("application/pkix-crl").header("cache-control", "max-age=60");
    return der;
  });
};
