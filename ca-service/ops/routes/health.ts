import type { FastifyPluginAsync } from "fastify";
import { Type } from "@sinclair/typebox";
import { EdgeTrustError } from "../../../common/index.js";
import { problemResponses } from "../../http.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const Health = Type.Object({
  status: Type.Literal("ok"),
  database: Type.String(),
  issuingCas: Type.Integer(),
  currentIssuer: Type.String(),
  auditEntries: Type.Integer(),
});

/** GET /healthz — liveness and readiness: the database answers and an issuing CA is usable. */
export const healthRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store }) => {
  app.get("/healthz", { config: { auth: "public" },
    schema: { summary: "Health: database reachable and writable, an issuing CA usable", tags: ["ops"], response: { 200: Health, ...problemResponses(503, 507) } },
  }, async () => {
    // Reachable is not enough: a store whose file system is full or read-only answers reads but refuses every change.
    await store.db.probeWritable?.();
    let head: { seq: number | string }[];
    try {
      head = await store.db.query<{ seq: number | string }>("SELECT seq FROM audit_head WHERE id = 1");
    } catch (e) {
      throw new EdgeTrustError("UNAVAILABLE", "database unreachable", { cause: e });
    }
    const cur = ca.current();
    return { status: "ok" as const, database: store.dialect, issuingCas: ca.issuers().length, currentIssuer: cur.record.id, auditEntries: Number(head[0]?.seq ?? 0) };
  });
};
