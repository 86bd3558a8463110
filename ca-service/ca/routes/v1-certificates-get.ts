import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError } from "../../../common/index.js";
import { normalizeSerial } from "../../store.js";
import { problemResponses, requireRole, SecurityBearer } from "../../http.js";
import { CertificateView, certificateView, Serial } from "../schemas.js";
import { DeviceId } from "../../shared/schemas.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const Params = Type.Object({ serial: Serial });
const Query = Type.Object({
  deviceId: Type.Optional(DeviceId),
  status: Type.Optional(Type.Union([Type.Literal("good"), Type.Literal("revoked")])),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  after: Type.Optional(Type.String({ pattern: "^[0-9a-f]{1,80}$", description: "page after this serial" })),
}, { additionalProperties: false });

/** GET /v1/certificates[/:serial] — admins and auditors read the issuance records. */
export const certificateReadRoutes: FastifyPluginAsync<RouteDeps> = async (app, { store }) => {
  app.get<{ Params: Static<typeof Params> }>("/v1/certificates/:serial", {
    onRequest: requireRole(store, "admin", "auditor"),
    schema: { summary: "One issued certificate", tags: ["certificates"], security: SecurityBearer, params: Params, response: { 200: CertificateView, ...problemResponses(400, 401, 403, 404) } },
  }, async (req) => {
    const rec = await store.getCertificate(normalizeSerial(req.params.serial));
    if (!rec) throw new EdgeTrustError("NOT_FOUND", `no certificate with serial ${req.params.serial}`);
    return certificateView(rec);
  });
  app.get<{ Querystring: Static<typeof Query> }>("/v1/certificates", {
    onRequest: requireRole(store, "admin", "auditor"),
    schema: { summary: "Issued certificates (paged by serial)", tags: ["certificates"], security: SecurityBearer, querystring: Query, response: { 200: Type.Object({ certificates: Type.Array(CertificateView) }), ...problemResponses(400, 401, 403) } },
  }, async (req) => {
    const q = req.query;
    const list = await store.listCertificates({ ...(q.deviceId ? { deviceId: q.deviceId } : {}), ...(q.status ? { status: q.status } : {}), ...(q.after ? { afterSerial: q.after } : {}), limit: q.limit ?? 100 });
    return { certificates: list.map(certificateView) };
  });
};
