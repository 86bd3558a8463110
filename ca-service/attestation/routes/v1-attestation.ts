import type { FastifyPluginAsync } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { verifierFor } from "../verifier.js";
import { problemResponses } from "../../http.js";
import type { RouteDeps } from "../../shared/route-deps.js";
import { recordAttestation } from "../../fleet/record.js";

const NonceView = Type.Object({ nonce: Type.String(), expiresAt: Type.String() });
const VerifyBody = Type.Object({ evidence: Type.String({ minLength: 20, maxLength: 65536 }) }, { additionalProperties: false });
const Claim = Type.Object({
  status: Type.Union([Type.Literal("affirming"), Type.Literal("warning"), Type.Literal("contraindicated")]),
  reason: Type.String(),
  measured: Type.Optional(Type.String({ description: "the measured value (digest, `digest vN` for the manifest)" })),
  reference: Type.Optional(Type.String({ description: "the reference value that decided it: `<source>: <rule>`" })),
});
const VerifyView = Type.Object({
  status: Type.Union([Type.Literal("affirming"), Type.Literal("warning"), Type.Literal("contraindicated")]),
  result: Type.String({ description: "EAR attestation result: JWT signed by the issuing CA (x5c)" }),
  deviceId: Type.String(),
  claims: Type.Record(Type.String(), Claim),
});

/**
 * Remote attestation verifier: POST /v1/attestation/nonce (single use, short-lived), POST /v1/attestation/verify
 * (EAT-style evidence signed by a device identity key → EAR result signed by the CA, with a reason per claim).
 */
export const attestationRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  const v = verifierFor(deps);
  app.post("/v1/attestation/nonce", { config: { auth: "public" },
    schema: { summary: "A fresh single-use nonce for attestation evidence (eat_nonce)", tags: ["attestation"], response: { 200: NonceView, ...problemResponses(429) } },
  }, async (req, reply) => {
    reply.header("cache-control", "no-store");
    return v.nonce(req.ip);
  });
  app.post<{ Body: Static<typeof VerifyBody> }>("/v1/attestation/verify", { config: { auth: "public" },
    schema: { summary: "Appraise evidence against reference values; EAR result signed by the CA", tags: ["attestation"], body: VerifyBody, response: { 200: VerifyView, ...problemResponses(400, 403) } },
  }, async (req) => {
    const r = await v.verify(req.body.evidence);
    // The fleet view keeps the latest appraisal per device (issue 16); the device gets the same verdict either way.
    await recordAttestation(deps.store, { deviceId: r.deviceId, status: r.status, claims: r.claims, reference: v.referenceSource() });
    return r;
  });
};
