import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { isEdgeTrustError } from "../../../common/index.js";
import { actorOf, problemResponses, requireRole, SecurityBearer, stringPropertiesSerializer } from "../../http.js";
import { IssuedView, ProfileSchema } from "../schemas.js";
import { CsrPem, DeviceId } from "../../shared/schemas.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const Body = Type.Object({
  csr: CsrPem,
  profile: ProfileSchema,
  deviceId: DeviceId,
  hostName: Type.Optional(Type.String({ maxLength: 253, description: "edge-hub-server: one of the device's DNS names" })),
}, { additionalProperties: false });

const issuedJson = stringPropertiesSerializer(IssuedView);

/** POST /v1/certificates — admin issuance from a PKCS#10 request for an enrolled device. */
export const issueRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store, metrics }) => {
  app.post<{ Body: Static<typeof Body> }>("/v1/certificates", {
    onRequest: requireRole(store, "admin"),
    schema: {
      summary: "Issue a certificate from a CSR; subject and SANs come from the enrollment record and the profile",
      tags: ["certificates"], security: SecurityBearer, body: Body,
      response: { 201: IssuedView, ...problemResponses(400, 401, 403, 404, 409) },
    },
  }, async (req, reply) => {
    try {
      const out = await ca.issue({ csrPem: req.body.csr, profile: req.body.profile, deviceId: req.body.deviceId, ...(req.body.hostName ? { hostName: req.body.hostName } : {}) }, actorOf(req));
      metrics.issued.inc({ profile: out.record.profile, kind: "issue" });
      reply.code(201).type("application/json; charset=utf-8").serializer(issuedJson);
      return { serial: out.record.serial, profile: out.record.profile, notAfter: out.record.notAfter, certificatePem: out.record.certPem, chainPem: out.chainPem, issuerId: out.record.issuerId };
    } catch (e) {
      if (isEdgeTrustError(e)) metrics.refused.inc({ code: e.code });
      throw e;
    }
  });
};
