import type { FastifyPluginAsync } from "fastify";
import { registerRoutes, type RouteDeps } from "../shared/route-deps.js";
import { lineRoutes } from "./routes/v1-enrollments-lines.js";
import { enrollmentRoutes } from "./routes/v1-enrollments.js";
import { enrollmentImportRoutes } from "./routes/v1-enrollments-import.js";
import { registrationRoutes } from "./routes/v1-enrollments-register.js";
import { estRoutes } from "./routes/est-enroll.js";
import { dpsRoutes } from "./routes/dps-register.js";
import { RefusalAudit, refusalFromError } from "./refusals.js";
import { EnrollmentStore } from "./store.js";
import { groupKeyVault } from "./group-keys.js";

/**
 * Every enrollment-API route (lines, enrollments, import, registration, EST, DPS), each file its own plugin. Every
 * refusal of any of them (4xx) is audited here, once, under the flood budget of `RefusalAudit`.
 */
export const enrollmentPlugin: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  // Issue 17 start-up migration: group keys a database still holds plain are wrapped before any route serves; a CA
  // whose key store cannot wrap them does not start (a plain key left in the database is the finding itself).
  const wrapped = await new EnrollmentStore(deps.store, groupKeyVault(deps.ca.keys)).wrapPlainGroupKeys();
  if (wrapped > 0) app.log.warn({ wrapped }, "enrollment group keys found plain in the database were wrapped by the CA key store");
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
  await registerRoutes(app, deps, [
    lineRoutes, enrollmentRoutes, enrollmentImportRoutes, registrationRoutes, estRoutes, dpsRoutes,
  ]);
};
