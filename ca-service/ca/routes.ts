import type { FastifyInstance } from "fastify";
import type { RouteDeps } from "../routes/types.js";
import { casRoutes } from "./routes/v1-cas.js";
import { issueRoutes } from "./routes/v1-certificates-issue.js";
import { certificateReadRoutes } from "./routes/v1-certificates-get.js";
import { revokeRoutes } from "./routes/v1-certificates-revoke.js";
import { crlRoutes } from "./routes/v1-crl.js";
import { ocspRoutes } from "./routes/v1-ocsp.js";
import { renewRoutes } from "./routes/v1-renew.js";
import { auditRoutes } from "./routes/v1-audit.js";
import { adminRoutes } from "./routes/v1-admin.js";

export { crlRoutes, ocspRoutes };

/**
 * The CA feature's routes (CA certificates, issuance, reads, revocation, CRL, OCSP, renewal, audit, admin), each file
 * its own plugin, registered side by side on the service (as before: the renewal attestation hook sees them all).
 */
export async function registerCaRoutes(app: FastifyInstance, deps: RouteDeps): Promise<void> {
  await app.register(casRoutes, deps);
  await app.register(issueRoutes, deps);
  await app.register(certificateReadRoutes, deps);
  await app.register(revokeRoutes, deps);
  await app.register(crlRoutes, deps);
  await app.register(ocspRoutes, deps);
  await app.register(renewRoutes, deps);
  await app.register(auditRoutes, deps);
  await app.register(adminRoutes, deps);
}
