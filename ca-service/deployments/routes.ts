import type { FastifyPluginAsync } from "fastify";
import type { RouteDeps } from "../shared/route-deps.js";
import { deploymentRoutes } from "./routes/v1-deployments.js";

/** The deployments feature (manifest upload and listing, device fetch and reports), encapsulated. */
export const deploymentsPlugin: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  await app.register(deploymentRoutes, deps);
};
