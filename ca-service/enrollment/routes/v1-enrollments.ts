import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError } from "../../../common/index.js";
import { problemResponses, SecurityBearer } from "../../http.js";
import { lineRateLimit, requireLine, writerOf } from "../auth.js";
import { ENROLLMENT_PROFILES, GROUP_ATTESTATIONS, GROUP_ID_PATTERN, INDIVIDUAL_ATTESTATIONS, REGISTRATION_ID_PATTERN, type EnrollmentGroup, type IndividualEnrollment } from "../model.js";
import { EnrollmentStore } from "../store.js";
import { groupKeyVault } from "../group-keys.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const lit = <T extends string>(xs: readonly T[]) => Type.Union(xs.map((x) => Type.Literal(x)));
const Labels = Type.Record(Type.String({ maxLength: 63 }), Type.String({ maxLength: 256 }), { maxProperties: 32 });
const Status = lit(["enabled", "disabled"] as const);
export const RegistrationIdParam = Type.String({ pattern: REGISTRATION_ID_PATTERN, description: "registration id (= device id)" });

const IndividualBody = Type.Object({
  attestation: lit(INDIVIDUAL_ATTESTATIONS),
  credential: Type.String({ minLength: 16, maxLength: 16384, description: "publicKey/tpm: SPKI (PEM or base64 DER); x509: the bootstrap certificate (PEM or base64 DER)" }),
  profile: Type.Optional(lit(ENROLLMENT_PROFILES)),
  lifetimeDays: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 3650 }), Type.Null()])),
  edgeCa: Type.Optional(Type.Boolean({ description: "issue an Edge CA certificate at registration (default: true for device-identity)" })),
  dnsNames: Type.Optional(Type.Array(Type.String({ maxLength: 253 }), { maxItems: 16 })),
  labels: Type.Optional(Labels),
  status: Type.Optional(Status),
}, { additionalProperties: false });

const IndividualView = Type.Object({
  registrationId: Type.String(), attestation: Type.String(), credentialSha256: Type.String(), profile: Type.String(),
  lifetimeDays: Type.Union([Type.Integer(), Type.Null()]), edgeCa: Type.Boolean(), dnsNames: Type.Array(Type.String()), labels: Labels,
  status: Type.String(), lineId: Type.Union([Type.String(), Type.Null()]), createdAt: Type.String(), updatedAt: Type.String(),
});
const GroupBody = Type.Object({
  attestation: lit(GROUP_ATTESTATIONS),
  caCertPem: Type.Optional(Type.String({ maxLength: 16384, description: "x509CA: the CA that signed the bootstrap certificates" })),
  groupKey: Type.Optional(Type.String({ maxLength: 256, description: "symmetricKey: base64 group key (generated when absent; returned once)" })),
  profile: Type.Optional(lit(ENROLLMENT_PROFILES)),
  lifetimeDays: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 3650 }), Type.Null()])),
  edgeCa: Type.Optional(Type.Boolean()),
  labels: Type.Optional(Labels),
  status: Type.Optional(Status),
}, { additionalProperties: false });
const GroupView = Type.Object({
  id: Type.String(), attestation: Type.String(), caCertPem: Type.Union([Type.String(), Type.Null()]), hasGroupKey: Type.Boolean(), profile: Type.String(),
  lifetimeDays: Type.Union([Type.Integer(), Type.Null()]), edgeCa: Type.Boolean(), labels: Labels, status: Type.String(),
  lineId: Type.Union([Type.String(), Type.Null()]), createdAt: Type.String(), updatedAt: Type.String(),
  groupKey: Type.Optional(Type.String({ description: "only in the reply that created the group or set its key" })),
});
const IdParams = Type.Object({ registrationId: RegistrationIdParam });
const GroupParams = Type.Object({ groupId: Type.String({ pattern: GROUP_ID_PATTERN }) });
const StatusBody = Type.Object({ status: Status }, { additionalProperties: false });
const ListQuery = Type.Object({
  after: Type.Optional(Type.String({ maxLength: 128 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
}, { additionalProperties: false });

function individualView(e: IndividualEnrollment): Static<typeof IndividualView> {
  const { credential: _c, rowHash: _h, ...rest } = e;
  return rest;
}
const groupView = (g: EnrollmentGroup) => g;

/**
 * Enrollments, written by provisioning lines (their own) and admins (all): individual enrollments keyed by
 * registration id, and enrollment groups. Every change is audited with the line as actor.
 */
export const enrollmentRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store, config }) => {
  const es = new EnrollmentStore(store, groupKeyVault(ca.keys));
  const rateLimit = lineRateLimit(es, config.rateLimitPerMinute);
  const enroll = requireLine(store, es, "enroll");
  const read = requireLine(store, es, "read");
  const own = (e: IndividualEnrollment | undefined, lineId: string | null, id: string): IndividualEnrollment => {
    if (!e || (lineId && e.lineId !== lineId)) throw new EdgeTrustError("NOT_FOUND", `no enrollment ${id}`);
    return e;
  };

  app.put<{ Params: Static<typeof IdParams>; Body: Static<typeof IndividualBody> }>("/v1/enrollments/:registrationId", {
    onRequest: enroll, config: { rateLimit },
    schema: { summary: "Create or update an individual enrollment (idempotent)", tags: ["enrollment"], security: SecurityBearer, params: IdParams, body: IndividualBody, response: { 200: IndividualView, 201: IndividualView, ...problemResponses(400, 401, 403, 404, 429) } },
  }, async (req, reply) => {
    const r = await es.putIndividual({ ...req.body, registrationId: req.params.registrationId }, writerOf(req));
    reply.code(r.outcome === "inserted" ? 201 : 200);
    return individualView(r.enrollment);
  });
  app.get<{ Params: Static<typeof IdParams> }>("/v1/enrollments/:registrationId", {
    onRequest: read, config: { rateLimit },
    schema: { summary: "One individual enrollment", tags: ["enrollment"], security: SecurityBearer, params: IdParams, response: { 200: IndividualView, ...problemResponses(400, 401, 403, 404, 429) } },
  }, async (req) => individualView(own(await es.getIndividual(req.params.registrationId), writerOf(req).lineId, req.params.registrationId)));
  app.get<{ Querystring: Static<typeof ListQuery> }>("/v1/enrollments", {
    onRequest: read, config: { rateLimit },
    schema: { summary: "Individual enrollments (a line sees its own), paged by registration id", tags: ["enrollment"], security: SecurityBearer, querystring: ListQuery, response: { 200: Type.Object({ enrollments: Type.Array(IndividualView) }), ...problemResponses(400, 401, 403, 429) } },
  }, async (req) => ({ enrollments: (await es.listIndividuals({ lineId: writerOf(req).lineId, ...(req.query.after ? { after: req.query.after } : {}), limit: req.query.limit ?? 100 })).map(individualView) }));
  app.patch<{ Params: Static<typeof IdParams>; Body: Static<typeof StatusBody> }>("/v1/enrollments/:registrationId", {
    onRequest: enroll, config: { rateLimit },
    schema: { summary: "Enable or disable an individual enrollment", tags: ["enrollment"], security: SecurityBearer, params: IdParams, body: StatusBody, response: { 200: IndividualView, ...problemResponses(400, 401, 403, 404, 429) } },
  }, async (req) => individualView(await es.setIndividualStatus(req.params.registrationId, req.body.status, writerOf(req))));

  app.put<{ Params: Static<typeof GroupParams>; Body: Static<typeof GroupBody> }>("/v1/enrollment-groups/:groupId", {
    onRequest: enroll, config: { rateLimit },
    schema: { summary: "Create or update an enrollment group (x509CA or symmetricKey)", tags: ["enrollment"], security: SecurityBearer, params: GroupParams, body: GroupBody, response: { 200: GroupView, 201: GroupView, ...problemResponses(400, 401, 403, 429) } },
  }, async (req, reply) => {
    const existed = Boolean(await es.getGroup(req.params.groupId));
    const g = await es.putGroup({ ...req.body, id: req.params.groupId }, writerOf(req));
    const key = !existed || req.body.groupKey ? await es.groupKey(g.id) : undefined;
    reply.code(existed ? 200 : 201).header("cache-control", "no-store");
    return { ...groupView(g), ...(key ? { groupKey: key } : {}) };
  });
  app.get<{ Params: Static<typeof GroupParams> }>("/v1/enrollment-groups/:groupId", {
    onRequest: read, config: { rateLimit },
    schema: { summary: "One enrollment group (never its key)", tags: ["enrollment"], security: SecurityBearer, params: GroupParams, response: { 200: GroupView, ...problemResponses(400, 401, 403, 404, 429) } },
  }, async (req) => {
    const g = await es.getGroup(req.params.groupId);
    const lineId = writerOf(req).lineId;
    if (!g || (lineId && g.lineId !== lineId)) throw new EdgeTrustError("NOT_FOUND", `no enrollment group ${req.params.groupId}`);
    return groupView(g);
  });
  app.get("/v1/enrollment-groups", {
    onRequest: read, config: { rateLimit },
    schema: { summary: "Enrollment groups", tags: ["enrollment"], security: SecurityBearer, response: { 200: Type.Object({ groups: Type.Array(GroupView) }), ...problemResponses(401, 403, 429) } },
  }, async (req) => ({ groups: (await es.listGroups({ lineId: writerOf(req).lineId })).map(groupView) }));
  app.patch<{ Params: Static<typeof GroupParams>; Body: Static<typeof StatusBody> }>("/v1/enrollment-groups/:groupId", {
    onRequest: enroll, config: { rateLimit },
    schema: { summary: "Enable or disable an enrollment group", tags: ["enrollment"], security: SecurityBearer, params: GroupParams, body: StatusBody, response: { 200: GroupView, ...problemResponses(400, 401, 403, 404, 429) } },
  }, async (req) => groupView(await es.setGroupStatus(req.params.groupId, req.body.status, writerOf(req))));
};
