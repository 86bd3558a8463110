import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { actorOf, problemResponses, requireRole, SecurityBearer } from "../../http.js";
import { CertificateView, certificateView, ReasonSchema, Serial } from "../schemas.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const Params = Type.Object({ serial: Serial });
const Body = Type.Object({ reason: ReasonSchema }, { additionalProperties: false });

/** POST /v1/certificates/:serial/revoke — admin only; the issuer's CRL is regenerated before the reply. */
export const revokeRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store, metrics }) => {
  app.post<{ Params: Static<typeof Params>; Body: Static<typeof Body> }>("/v1/certificates/:serial/revoke", {
    onRequest: requireRole(store, "admin"),
    schema: { summary: "Revoke a certificate (RFC 5280 reason)", tags: ["certificates"], security: SecurityBearer, params: Params, body: Body, response: { 200: CertificateView, ...problemResponses(400, 401, 403, 404, 409) } },
  }, async (req) => {
    const rec = await ca.revoke(req.params.serial, req.body.reason, actorOf(req));
    metrics.revoked.inc({ reason: req.body.reason });
    return certificateView(rec);
  });
};
