import type { FastifyPluginAsync } from "fastify";
import type { RouteDeps } from "../routes/types.js";
import { lineRoutes } from "../routes/v1-enrollments-lines.js";
import { enrollmentRoutes } from "../routes/v1-enrollments.js";
import { enrollmentImportRoutes } from "../routes/v1-enrollments-import.js";
import { registrationRoutes } from "../routes/v1-enrollments-register.js";
import { estRoutes } from "../routes/est-enroll.js";
import { dpsRoutes } from "../routes/dps-register.js";

/** Every enrollment-API route (lines, enrollments, import, registration, EST, DPS), each file its own plugin. */
export const enrollmentApiRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  await app.register(lineRoutes, deps);
  await app.register(enrollmentRoutes, deps);
  await app.register(enrollmentImportRoutes, deps);
  await app.register(registrationRoutes, deps);
  await app.register(estRoutes, deps);
  await app.register(dpsRoutes, deps);
};
