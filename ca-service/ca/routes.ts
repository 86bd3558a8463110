import type { FastifyPluginAsync } from "fastify";
import { registerRoutes, type RouteDeps } from "../shared/route-deps.js";
import { casRoutes } from "./routes/v1-cas.js";
import { issueRoutes } from "./routes/v1-certificates-issue.js";
import { certificateReadRoutes } from "./routes/v1-certificates-get.js";
import { revokeRoutes } from "./routes/v1-certificates-revoke.js";
import { crlRoutes } from "./routes/v1-crl.js";
import { ocspRoutes } from "./routes/v1-ocsp.js";
import { renewRoutes } from "./routes/v1-renew.js";
import { auditRoutes } from "./routes/v1-audit.js";
import { adminRoutes } from "./routes/v1-admin.js";

/**
 * The CA feature (CA certificates, issuance, reads, revocation, CRL, OCSP, renewal, audit, admin), each route file its
 * own plugin inside this one. Encapsulated: it adds no hook or decorator; the service-wide hooks (auth check, metrics,
 * rate limit, problem+json) and the renewal attestation gate are registered on the root and reach its routes.
 */
export const caPlugin: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  await registerRoutes(app, deps, [
    casRoutes, issueRoutes, certificateReadRoutes, revokeRoutes, revocationPlugin, renewRoutes, auditRoutes, adminRoutes,
  ]);
};

/** CRL and OCSP: part of the CA feature, and all the plain-HTTP revocation listener serves of it. */
export const revocationPlugin: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  await registerRoutes(app, deps, [crlRoutes, ocspRoutes]);
};
