import type { FastifyPluginAsync } from "fastify";
import type { RouteDeps } from "./types.js";

/** GET /metrics — Prometheus text exposition. */
export const metricsRoutes: FastifyPluginAsync<RouteDeps> = async (app, { metrics }) => {
  app.get("/metrics", { config: { auth: "public" }, schema: { summary: "Prometheus metrics", tags: ["ops"], produces: ["text/plain"] } }, async (_req, reply) => {
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
};
