import type { FastifyPluginAsync } from "fastify";
import type { RouteDeps } from "../routes/types.js";
import { lineRoutes } from "./routes/v1-enrollments-lines.js";
import { enrollmentRoutes } from "./routes/v1-enrollments.js";
import { enrollmentImportRoutes } from "./routes/v1-enrollments-import.js";
import { registrationRoutes } from "./routes/v1-enrollments-register.js";
import { estRoutes } from "./routes/est-enroll.js";
import { dpsRoutes } from "./routes/dps-register.js";
import { RefusalAudit, refusalFromError } from "./refusals.js";

/**
 * Every enrollment-API route (lines, enrollments, import, registration, EST, DPS), each file its own plugin. Every
 * refusal of any of them (4xx) is audited here, once, under the flood budget of `RefusalAudit`.
 */
export const enrollmentApiRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  const refusals = new RefusalAudit(deps.store);
  refusals.startTimer();
  const silent = { error: (): void => undefined };
  app.addHook("onError", async (req, _reply, err) => {
    const r = refusalFromError(err, req, silent);
    if (!r) return;
    await refusals.record(r).catch((e: unknown) => req.log.warn({ err: e instanceof Error ? e.message : String(e) }, "could not audit a refusal"));
  });
  app.addHook("onClose", async () => {
    await refusals.close();
  });
  await app.register(lineRoutes, deps);
  await app.register(enrollmentRoutes, deps);
  await app.register(enrollmentImportRoutes, deps);
  await app.register(registrationRoutes, deps);
  await app.register(estRoutes, deps);
  await app.register(dpsRoutes, deps);
};
