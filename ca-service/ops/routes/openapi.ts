import type { FastifyPluginAsync } from "fastify";

/** GET /openapi.json — the OpenAPI 3 document generated from every route's schema. */
export const openapiRoutes: FastifyPluginAsync = async (app) => {
  app.get("/openapi.json", { config: { auth: "public" }, schema: { summary: "OpenAPI document", tags: ["ops"], hide: true } }, async () => app.swagger());
};
