import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../../common/index.js";
import { certificateIdentity } from "../../pki/index.js";
import { AttestationVerifier } from "./verifier.js";
import { peerCertificate, problemResponses } from "../http.js";
import type { RouteDeps } from "../routes/types.js";
import { recordAttestation } from "../fleet/record.js";

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

const verifiers = new WeakMap<RouteDeps["ca"], AttestationVerifier>();
function verifierFor(deps: RouteDeps): AttestationVerifier {
  let v = verifiers.get(deps.ca);
  if (!v) {
    v = new AttestationVerifier(deps.ca, deps.store, deps.config.attestation);
    verifiers.set(deps.ca, v);
  }
  return v;
}

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

/**
 * With `ca.attestation.requiredForRenewal`: POST /v1/renew needs `X-Edgetrust-Attestation: <EAR JWT>` — affirming,
 * unexpired, signed by this CA, about the device whose certificate is renewing (an Edge CA renews for its device).
 */
export function requireAttestationForRenewal(app: FastifyInstance, deps: RouteDeps): void {
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
