import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError, isEdgeTrustError } from "../../../common/index.js";
import { peerCertificate, problemResponses } from "../../http.js";
import { IssuedView } from "../schemas.js";
import { CsrPem } from "../../shared/schemas.js";
import type { RouteDeps } from "../../shared/route-deps.js";
import { requireIssuedCertificate } from "../../device-auth.js";

const Body = Type.Object({
  csr: CsrPem,
  hostName: Type.Optional(Type.String({ maxLength: 253 })),
}, { additionalProperties: false });

const Renewed = Type.Composite([IssuedView, Type.Object({ rekey: Type.Boolean(), replaces: Type.String() })]);

/**
 * POST /v1/renew — a device renews with the certificate it holds now, presented as the TLS client certificate (the
 * handshake proves its key). Same key in the CSR: renewal; a new key: rekey (same identity). Accepted up to
 * `renewAfterExpiryDays` after expiry, so devices that were offline come back without re-enrolling.
 */
export const renewRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store, metrics }) => {
  app.post<{ Body: Static<typeof Body> }>("/v1/renew", {
    onRequest: requireIssuedCertificate(store),
    schema: { summary: "Renew or rekey with the current certificate (mTLS)", tags: ["certificates"], body: Body, response: { 200: Renewed, ...problemResponses(400, 401, 403) } },
  }, async (req) => {
    const peer = peerCertificate(req);
    if (!peer) throw new EdgeTrustError("UNAUTHENTICATED", "renewal needs the current certificate as the TLS client certificate");
    try {
      const out = await ca.renew(new Uint8Array(peer.raw), req.body.csr, req.body.hostName);
      metrics.issued.inc({ profile: out.record.profile, kind: out.rekey ? "rekey" : "renew" });
      return {
        serial: out.record.serial, profile: out.record.profile, notAfter: out.record.notAfter, certificatePem: out.record.certPem,
        chainPem: out.chainPem, issuerId: out.record.issuerId, rekey: out.rekey, replaces: out.record.replacesSerial ?? "",
      };
    } catch (e) {
      if (isEdgeTrustError(e)) metrics.refused.inc({ code: e.code });
      throw e;
    }
  });
};
