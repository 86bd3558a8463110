import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { actorOf, problemResponses, requireRole, SecurityBearer } from "../../http.js";
import { DeviceId } from "../../shared/schemas.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const TokenBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 100 }),
  role: Type.Union([Type.Literal("admin"), Type.Literal("auditor")]),
}, { additionalProperties: false });
const TokenCreated = Type.Object({ id: Type.String(), role: Type.String(), token: Type.String({ description: "shown once; only its sha256 is stored" }) });
const PrincipalParams = Type.Object({ id: Type.String({ format: "uuid" }) });

const EnrollmentParams = Type.Object({ deviceId: DeviceId });
const EnrollmentBody = Type.Object({
  kind: Type.Union([Type.Literal("device"), Type.Literal("leaf")], { default: "device" }),
  commonName: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  dnsNames: Type.Array(Type.String({ pattern: "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", maxLength: 253 }), { maxItems: 16, default: [] }),
  status: Type.Union([Type.Literal("enabled"), Type.Literal("disabled")], { default: "enabled" }),
}, { additionalProperties: false });
const EnrollmentView = Type.Object({ deviceId: Type.String(), kind: Type.String(), commonName: Type.String(), dnsNames: Type.Array(Type.String()), status: Type.String(), createdAt: Type.String(), updatedAt: Type.String() });

/**
 * Admin routes: API tokens, and the minimal device records issuance reads subject and SANs from. The full enrollment
 * API (factory lines, EST, DPS) is a later component and will write the same records.
 */
export const adminRoutes: FastifyPluginAsync<RouteDeps> = async (app, { store }) => {
  app.post<{ Body: Static<typeof TokenBody> }>("/v1/admin/tokens", {
    onRequest: requireRole(store, "admin"),
    schema: { summary: "Create an admin or auditor API token", tags: ["admin"], security: SecurityBearer, body: TokenBody, response: { 201: TokenCreated, ...problemResponses(400, 401, 403) } },
  }, async (req, reply) => {
    const t = await store.createToken(req.body.name, req.body.role, actorOf(req));
    reply.code(201).header("cache-control", "no-store");
    return t;
  });
  app.delete<{ Params: Static<typeof PrincipalParams> }>("/v1/admin/principals/:id", {
    onRequest: requireRole(store, "admin"),
    schema: { summary: "Revoke an API token or admin certificate", tags: ["admin"], security: SecurityBearer, params: PrincipalParams, response: { 204: Type.Null(), ...problemResponses(400, 401, 403, 404) } },
  }, async (req, reply) => {
    await store.revokePrincipal(req.params.id, actorOf(req));
    return reply.code(204).send();
  });
  app.put<{ Params: Static<typeof EnrollmentParams>; Body: Static<typeof EnrollmentBody> }>("/v1/admin/enrollments/:deviceId", {
    onRequest: requireRole(store, "admin"),
    schema: { summary: "Create or update a device record (subject and SANs of its certificates)", tags: ["admin"], security: SecurityBearer, params: EnrollmentParams, body: EnrollmentBody, response: { 200: EnrollmentView, ...problemResponses(400, 401, 403) } },
  }, async (req) => {
    const b = req.body;
    return store.upsertEnrollment({ deviceId: req.params.deviceId, kind: b.kind, commonName: b.commonName ?? req.params.deviceId, dnsNames: b.dnsNames, status: b.status }, actorOf(req));
  });
};
