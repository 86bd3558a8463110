import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../../common/index.js";
import { certificateIdentity } from "../../pki/index.js";
import { verifierFor } from "./verifier.js";
import { peerCertificate } from "../http.js";
import type { RouteDeps } from "../shared/route-deps.js";
import { attestationRoutes } from "./routes/v1-attestation.js";

/** The attestation feature: nonce and verify, encapsulated (it adds no hook or decorator anyone else sees). */
export const attestationPlugin: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  await app.register(attestationRoutes, deps);
};

/**
 * With `ca.attestation.requiredForRenewal`: POST /v1/renew needs `X-Edgetrust-Attestation: <EAR JWT>` — affirming,
 * unexpired, signed by this CA, about the device whose certificate is renewing (an Edge CA renews for its device).
 */
function requireAttestationForRenewal(app: FastifyInstance, deps: RouteDeps): void {
  const v = verifierFor(deps);
  app.addHook("preHandler", async (req: FastifyRequest) => {
    if (req.routeOptions.url !== "/v1/renew" || req.method !== "POST") return;
    const result = req.headers["x-edgetrust-attestation"];
    if (typeof result !== "string" || !result) {
      throw new EdgeTrustError("FORBIDDEN", "renewal requires a fresh affirming attestation result", { hint: "POST /v1/attestation/nonce, sign evidence, POST /v1/attestation/verify, send the result in X-Edgetrust-Attestation" });
    }
    const peer = peerCertificate(req);
    let uri: string | undefined;
    if (peer) {
      const id = certificateIdentity(new x509.X509Certificate(new Uint8Array(peer.raw)));
      uri = `edgetrust://${id.trustDomain}/devices/${id.deviceId}`;
    }
    await v.checkResult(result, uri);
  });
}

/**
 * The renewal gate as a plugin. Wrapped by fastify-plugin (not encapsulated) on purpose: its preHandler must reach
 * POST /v1/renew, which the ca feature's plugin registers, so the hook must land in the service's root context.
 * `attestation/gate.test.ts` fails if it stops applying.
 */
export const renewalAttestationGate = fp<RouteDeps>(async (app, deps) => {
  requireAttestationForRenewal(app, deps);
}, { name: "edgetrust-renewal-attestation-gate", fastify: "5.x" });
