import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { problemResponses, requireRole, SecurityBearer } from "../../http.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const Query = Type.Object({
  afterSeq: Type.Optional(Type.Integer({ minimum: 0, default: 0 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
}, { additionalProperties: false });

const Entry = Type.Object({
  seq: Type.Integer(), at: Type.String(), actor: Type.String(), action: Type.String(), target: Type.String(),
  details: Type.Record(Type.String(), Type.Unknown()), prevHash: Type.String(), hash: Type.String(),
});

const Verify = Type.Object({
  ok: Type.Boolean(), entries: Type.Integer(), headSeq: Type.Integer(),
  problem: Type.Optional(Type.Object({ seq: Type.Integer(), reason: Type.String() })),
});

/** The hash-chained audit log: read it, and check the chain (admins and auditors). */
export const auditRoutes: FastifyPluginAsync<RouteDeps> = async (app, { store }) => {
  app.get<{ Querystring: Static<typeof Query> }>("/v1/audit", {
    onRequest: requireRole(store, "admin", "auditor"),
    schema: { summary: "Audit entries after a sequence number", tags: ["audit"], security: SecurityBearer, querystring: Query, response: { 200: Type.Object({ entries: Type.Array(Entry) }), ...problemResponses(400, 401, 403) } },
  }, async (req) => ({ entries: await store.listAudit({ afterSeq: req.query.afterSeq ?? 0, limit: req.query.limit ?? 100 }) }));
  app.get("/v1/audit/verify", {
    onRequest: requireRole(store, "admin", "auditor"),
    schema: { summary: "Verify the audit hash chain", tags: ["audit"], security: SecurityBearer, response: { 200: Verify, ...problemResponses(401, 403) } },
  }, async () => store.verifyAudit());
};
