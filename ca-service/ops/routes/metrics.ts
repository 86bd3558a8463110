import type { FastifyPluginAsync } from "fastify";
import type { RouteDeps } from "../../shared/route-deps.js";

/** GET /metrics — Prometheus text exposition. */
export const metricsRoutes: FastifyPluginAsync<RouteDeps> = async (app, { metrics }) => {
  app.get("/metrics", { config: { auth: "public" }, schema: { summary: "Prometheus metrics", tags: ["ops"], produces: ["text/plain"] } }, async (_req, reply) => {
    reply.type(metrics.registry.contentType);
    return metrics.exposition();
  });
};
