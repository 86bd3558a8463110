import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError } from "../../../common/index.js";
import { problemResponses, SecurityBearer } from "../../http.js";
import { lineRateLimit, requireLine, writerOf } from "../auth.js";
import { parseImport, rowsFromJson } from "../import.js";
import { EnrollmentStore } from "../store.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const ImportReportSchema = Type.Object({
  total: Type.Integer(), inserted: Type.Integer(), updated: Type.Integer(), unchanged: Type.Integer(), notWritten: Type.Integer(),
  rejected: Type.Array(Type.Object({ row: Type.Integer(), registrationId: Type.Optional(Type.String()), reason: Type.String() })),
  batches: Type.Object({
    total: Type.Integer(), committed: Type.Integer(),
    rejected: Type.Array(Type.Object({ index: Type.Integer(), firstRow: Type.Integer(), lastRow: Type.Integer(), reason: Type.String() })),
  }),
});
const Query = Type.Object({ batchSize: Type.Optional(Type.Integer({ minimum: 1, maximum: 5000, default: 1000 })) }, { additionalProperties: false });

/** Largest import body: 100,000 rows of SPKI credentials fit comfortably. */
const IMPORT_BODY_LIMIT = 64 * 1024 * 1024;

/**
 * POST /v1/enrollments/import — bulk individual enrollments as CSV (`text/csv`) or JSON. Idempotent; all-or-nothing
 * per batch; the report lists every rejected row and why (200 even when rows were rejected: read the report).
 */
export const enrollmentImportRoutes: FastifyPluginAsync<RouteDeps> = async (app, { store, config }) => {
  const es = new EnrollmentStore(store);
  app.addContentTypeParser("text/csv", { parseAs: "string", bodyLimit: IMPORT_BODY_LIMIT }, (_req, body, done) => done(null, body));
  app.post<{ Body: unknown; Querystring: Static<typeof Query> }>("/v1/enrollments/import", {
    onRequest: requireLine(store, es, "enroll"), config: { rateLimit: lineRateLimit(es, config.rateLimitPerMinute) }, bodyLimit: IMPORT_BODY_LIMIT,
    schema: { summary: "Bulk import individual enrollments (CSV or JSON), idempotent, all-or-nothing per batch", tags: ["enrollment"], security: SecurityBearer, querystring: Query, consumes: ["text/csv", "application/json"], response: { 200: ImportReportSchema, ...problemResponses(400, 401, 403, 413, 429) } },
  }, async (req) => {
    const rows = typeof req.body === "string" ? parseImport(req.body, "csv") : rowsFromJson(req.body);
    if (rows.length === 0) throw new EdgeTrustError("INVALID_INPUT", "the import has no rows");
    return es.importIndividuals(rows, writerOf(req), { batchSize: req.query.batchSize ?? 1000 });
  });
};
