import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { actorOf, problemResponses, requireRole, SecurityBearer } from "../../http.js";
import { EnrollmentStore, LINE_SCOPES, type ProvisioningLine } from "../store.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const LineView = Type.Object({
  id: Type.String(), name: Type.String(), kind: Type.Union([Type.Literal("token"), Type.Literal("certificate")]),
  scopes: Type.Array(Type.String()), maxEnrollments: Type.Integer(), ratePerMinute: Type.Integer(), enrollmentsCreated: Type.Integer(),
  createdAt: Type.String(), revokedAt: Type.Union([Type.String(), Type.Null()]),
});
const LineBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 100 }),
  scopes: Type.Optional(Type.Array(Type.Union(LINE_SCOPES.map((s) => Type.Literal(s))), { minItems: 1, maxItems: 2 })),
  maxEnrollments: Type.Optional(Type.Integer({ minimum: 0, maximum: 100_000_000, description: "enrollments the line may create in total" })),
  ratePerMinute: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000 })),
  certFingerprintSha256: Type.Optional(Type.String({ pattern: "^([0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}$", description: "authenticate with this client certificate instead of a token" })),
}, { additionalProperties: false });
const Created = Type.Object({ line: LineView, token: Type.Optional(Type.String({ description: "shown once; only its sha256 is stored" })) });
const Params = Type.Object({ id: Type.String({ format: "uuid" }) });

const view = (l: ProvisioningLine) => l;

/** Admin: provisioning lines (factory API principals with scoped credentials, quotas and rate limits). */
export const lineRoutes: FastifyPluginAsync<RouteDeps> = async (app, { store }) => {
  const es = new EnrollmentStore(store);
  app.post<{ Body: Static<typeof LineBody> }>("/v1/lines", {
    onRequest: requireRole(store, "admin"),
    schema: { summary: "Create a provisioning line (token shown once, or a client certificate fingerprint)", tags: ["enrollment"], security: SecurityBearer, body: LineBody, response: { 201: Created, ...problemResponses(400, 401, 403) } },
  }, async (req, reply) => {
    const r = await es.createLine(req.body, actorOf(req));
    reply.code(201).header("cache-control", "no-store");
    return { line: view(r.line), ...(r.token ? { token: r.token } : {}) };
  });
  app.get("/v1/lines", {
    onRequest: requireRole(store, "admin", "auditor"),
    schema: { summary: "Provisioning lines", tags: ["enrollment"], security: SecurityBearer, response: { 200: Type.Object({ lines: Type.Array(LineView) }), ...problemResponses(401, 403) } },
  }, async () => ({ lines: (await es.listLines()).map(view) }));
  app.delete<{ Params: Static<typeof Params> }>("/v1/lines/:id", {
    onRequest: requireRole(store, "admin"),
    schema: { summary: "Revoke a provisioning line (its credential stops working at once)", tags: ["enrollment"], security: SecurityBearer, params: Params, response: { 200: LineView, ...problemResponses(400, 401, 403, 404) } },
  }, async (req) => view(await es.revokeLine(req.params.id, actorOf(req))));
};
