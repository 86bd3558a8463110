import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError } from "../../../common/index.js";
import { actorOf, peerCertificate, problemResponses, requireRole, SecurityBearer } from "../../http.js";
import { RegistrationService, type RegistrationCredential } from "../registration.js";
import type { TpmProof } from "../tpm.js";
import { EnrollmentStore } from "../store.js";
import { groupKeyVault } from "../group-keys.js";
import { EkTrust } from "../ek-roots.js";
import { CsrPem } from "../../shared/schemas.js";
import { RegistrationIdParam } from "./v1-enrollments.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const Issued = Type.Object({ serial: Type.String(), notAfter: Type.String(), certificatePem: Type.String(), chainPem: Type.String() });

const B64 = (maxLength: number, description: string) => Type.String({ minLength: 4, maxLength, pattern: "^[A-Za-z0-9+/]+={0,2}$", description });

/** The answer to a TPM challenge (enrollment attestation `tpm`); see ca-service/README.md "Enrollment → TPM". */
const TpmProofBody = Type.Object({
  challengeId: Type.String({ format: "uuid", description: "from POST /v1/registrations/{id}/tpm-challenge; single use" }),
  proof: B64(64, "base64 HMAC-SHA256(activated secret, label \\n challengeId \\n sha256hex(csr) \\n sha256hex(edgeCaCsr or ''))"),
  keyPub: B64(2048, "the identity key's TPM2B_PUBLIC (tpm2_create -u), base64"),
  certifyInfo: B64(2048, "tpm2_certify -o of the identity key by the AK (TPMS_ATTEST), base64"),
  certifySignature: B64(2048, "tpm2_certify -s -f plain, base64"),
}, { additionalProperties: false });

/** The registration contract of the device daemon (`RegistrationRequestBody` in, `RegistrationResultSchema` out). */
export const RegistrationRequestBody = Type.Object({
  csr: CsrPem,
  edgeCaCsr: Type.Optional(CsrPem),
  tpm: Type.Optional(TpmProofBody),
}, { additionalProperties: false, description: "PKCS#10 requests: the device identity key, and the Edge CA key when the enrollment issues one; tpm: the TPM proof for a tpm enrollment" });

const TpmChallengeBody = Type.Object({
  ekPub: Type.String({ minLength: 32, maxLength: 4096, description: "the endorsement key, PEM PUBLIC KEY (tpm2_createek -f pem) or base64 DER" }),
  akPub: B64(2048, "the attestation key's TPM2B_PUBLIC (tpm2_createak -u), base64"),
  akName: Type.String({ minLength: 4, maxLength: 200, pattern: "^(?:[0-9a-fA-F]+|[A-Za-z0-9+/]+={0,2})$", description: "the AK's name (tpm2_createak -n), hex or base64" }),
  ekCert: Type.Optional(Type.String({ minLength: 32, maxLength: 32768, description: "the EK certificate (tpm2_getekcertificate / NV index 0x1c00002), PEM followed by any intermediates, or base64 DER; must chain to a configured TPM manufacturer root (ca.tpm)" })),
}, { additionalProperties: false });

const TpmChallengeResult = Type.Object({
  challengeId: Type.String(),
  credential: Type.String({ description: "tpm2_makecredential output, base64: the -i file of tpm2_activatecredential" }),
  expiresAt: Type.String(),
});

const RegistrationResultSchema = Type.Object({
  registrationId: Type.String(),
  deviceId: Type.String(),
  status: Type.Literal("assigned"),
  operationId: Type.String(),
  assignedAt: Type.String(),
  enrollment: Type.Object({ kind: Type.Union([Type.Literal("individual"), Type.Literal("group")]), id: Type.String(), attestation: Type.String() }),
  identity: Issued,
  edgeCa: Type.Union([Issued, Type.Null()]),
  trustBundlePem: Type.String(),
  labels: Type.Record(Type.String(), Type.String()),
});

const Params = Type.Object({ registrationId: RegistrationIdParam });
const Headers = Type.Object({ "idempotency-key": Type.String({ minLength: 8, maxLength: 128, pattern: "^[\\x21-\\x7e]+$" }) });

/**
 * The bootstrap credential of a device request: TLS client certificate, HTTP Basic (derived key), or just the CSR.
 * A device presents ONE credential: with several, the one not consulted would be ignored, and a presented credential
 * is verified or the request refused — so two (an Authorization header and a client certificate, or either beside a
 * TPM proof) are a 401.
 */
export function registrationCredential(req: FastifyRequest, idScope?: string, tpm?: TpmProof): RegistrationCredential {
  const auth = req.headers.authorization;
  const cert = peerCertificate(req);
  const presented = [auth !== undefined ? "an Authorization header" : "", cert ? "a TLS client certificate" : "", tpm ? "a TPM proof" : ""].filter(Boolean);
  if (presented.length > 1) {
    throw new EdgeTrustError("UNAUTHENTICATED", `present one bootstrap credential, not ${presented.join(" and ")}`, { hint: "a credential that is presented must be the one that authenticates the device" });
  }
  if (tpm) return { kind: "tpm", proof: tpm };
  if (auth !== undefined) {
    if (auth.startsWith("SharedAccessSignature ")) {
      if (idScope === undefined) throw new EdgeTrustError("UNAUTHENTICATED", "SAS tokens are accepted on the DPS-compatible route; use Basic or a bootstrap certificate here");
      return { kind: "sas", header: auth, idScope };
    }
    const m = /^Basic ([A-Za-z0-9+/=]{4,1024})$/.exec(auth);
    if (!m?.[1]) throw new EdgeTrustError("UNAUTHENTICATED", "unsupported Authorization scheme", { hint: "Basic <registrationId:derived key>, SharedAccessSignature (DPS), or a bootstrap client certificate" });
    const text = Buffer.from(m[1], "base64").toString("utf8");
    const i = text.indexOf(":");
    if (i < 0) throw new EdgeTrustError("UNAUTHENTICATED", "malformed Basic credentials");
    return { kind: "basic", password: text.slice(i + 1) };
  }
  if (cert) return { kind: "x509", cert };
  return { kind: "none" };
}

/**
 * PUT /v1/registrations/:registrationId — a device registers: it proves possession of its key (CSR signature) and
 * its bootstrap credential, and receives its identity certificate, its Edge CA certificate and the trust bundle.
 * `Idempotency-Key` is required: a retry with the same key returns the same result (200); another key is refused.
 */
export const registrationRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store, metrics, config }) => {
  const es = new EnrollmentStore(store, groupKeyVault(ca.keys));
  const svc = new RegistrationService(ca, es, undefined, EkTrust.load(config.tpm));
  app.post<{ Params: Static<typeof Params>; Body: Static<typeof TpmChallengeBody> }>("/v1/registrations/:registrationId/tpm-challenge", { config: { auth: "bootstrap" },
    schema: {
      summary: "TPM enrollment, step 1: a credential sealed to the enrolled EK for the device's AK (answer it in PUT /v1/registrations/{id} tpm)", tags: ["registration"],
      params: Params, body: TpmChallengeBody, response: { 201: TpmChallengeResult, ...problemResponses(400, 401, 403, 503) },
    },
  }, async (req, reply) => {
    const c = await svc.tpmChallenge(req.params.registrationId, req.body, req.ip);
    reply.code(201).header("cache-control", "no-store");
    return c;
  });
  app.put<{ Params: Static<typeof Params>; Body: Static<typeof RegistrationRequestBody>; Headers: Static<typeof Headers> }>("/v1/registrations/:registrationId", { config: { auth: "bootstrap" },
    schema: {
      summary: "Register a device (bootstrap certificate over mTLS, Basic with the derived group key, or an enrolled public key)", tags: ["registration"],
      params: Params, headers: Headers, body: RegistrationRequestBody, response: { 200: RegistrationResultSchema, 201: RegistrationResultSchema, ...problemResponses(400, 401, 403, 409, 422, 429) },
    },
  }, async (req, reply) => {
    const b = req.params.registrationId;
    if (req.headers.authorization?.startsWith("Basic ")) {
      const user = Buffer.from(req.headers.authorization.slice(6), "base64").toString("utf8").split(":")[0];
      if (user !== b) throw new EdgeTrustError("UNAUTHENTICATED", "the Basic user name is not this registration id");
    }
    const out = await svc.register({
      registrationId: b, csr: req.body.csr, ...(req.body.edgeCaCsr ? { edgeCaCsr: req.body.edgeCaCsr } : {}),
      idempotencyKey: req.headers["idempotency-key"], credential: registrationCredential(req, undefined, req.body.tpm), channel: "api",
    });
    if (!out.replayed) metrics.issued.inc({ profile: "registration", kind: "issue" });
    reply.code(out.replayed ? 200 : 201).header("cache-control", "no-store");
    return out.result;
  });
  app.delete<{ Params: Static<typeof Params> }>("/v1/registrations/:registrationId", {
    onRequest: requireRole(store, "admin"),
    schema: { summary: "Reset a registration so a wiped device may register again (its certificates stay valid; revoke them separately)", tags: ["registration"], security: SecurityBearer, params: Params, response: { 204: Type.Null(), ...problemResponses(400, 401, 403, 404) } },
  }, async (req, reply) => {
    await es.resetRegistration(req.params.registrationId, actorOf(req));
    return reply.code(204).send();
  });
};
