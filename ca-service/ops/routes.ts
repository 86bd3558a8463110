import type { FastifyPluginAsync } from "fastify";
import { registerRoutes, type RouteDeps } from "../shared/route-deps.js";
import { healthRoutes } from "./routes/health.js";
import { metricsRoutes } from "./routes/metrics.js";
import { openapiRoutes } from "./routes/openapi.js";

export { healthRoutes };

/** Service-wide operations routes (health, Prometheus metrics, the OpenAPI document), encapsulated. */
export const opsPlugin: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  await registerRoutes(app, deps, [healthRoutes, metricsRoutes, openapiRoutes]);
};
