import type { FastifyError, FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError } from "../../../common/index.js";
import { RegistrationService, type RegistrationResult } from "../registration.js";
import { EnrollmentStore } from "../store.js";
import { groupKeyVault } from "../group-keys.js";
import { sha256Hex } from "../../store.js";
import { RegistrationIdParam } from "./v1-enrollments.js";
import { registrationCredential } from "./v1-enrollments-register.js";
import type { RouteDeps } from "../../shared/route-deps.js";

const IdScope = Type.String({ pattern: "^[A-Za-z0-9]{1,64}$", description: "DPS ID scope (accepted as the SAS resource prefix; not a tenant boundary here)" });
const RegisterParams = Type.Object({ idScope: IdScope, registrationId: RegistrationIdParam });
const OperationParams = Type.Object({ idScope: IdScope, registrationId: RegistrationIdParam, operationId: Type.String({ format: "uuid" }) });
const Query = Type.Object({ "api-version": Type.Optional(Type.String({ maxLength: 32 })), forceRegistration: Type.Optional(Type.String({ maxLength: 8 })) });
/** The Azure SDK sends `{registrationId, payload?, tpm?}`; our CSRs travel in `payload` (setProvisioningPayload). */
const RegisterBody = Type.Object({
  registrationId: Type.String({ maxLength: 128 }),
  payload: Type.Optional(Type.Object({
    csr: Type.String({ maxLength: 16384 }),
    edgeCaCsr: Type.Optional(Type.String({ maxLength: 16384 })),
  }, { additionalProperties: true })),
  tpm: Type.Optional(Type.Object({ endorsementKey: Type.String(), storageRootKey: Type.Optional(Type.String()) })),
}, { additionalProperties: true });

const RETRY_AFTER_SECONDS = "1";

/** Azure DPS error body, plus our problem fields. */
function dpsError(reply: FastifyReply, req: FastifyRequest, e: EdgeTrustError): FastifyReply {
  const p = e.toProblem(req.url.split("?")[0]);
  if (e.retryAfterSeconds !== undefined) reply.header("retry-after", String(Math.ceil(e.retryAfterSeconds)));
  return reply.code(e.status).type("application/json; charset=utf-8").send({
    errorCode: e.status * 1000 + 1, trackingId: req.id, message: e.message, timestampUtc: new Date().toISOString(), ...p,
  });
}

function registrationState(r: RegistrationResult) {
  return {
    registrationId: r.registrationId,
    createdDateTimeUtc: r.assignedAt,
    assignedHub: r.labels.assignedHub ?? "localhost",
    deviceId: r.deviceId,
    status: "assigned",
    substatus: "initialAssignment",
    lastUpdatedDateTimeUtc: r.assignedAt,
    etag: JSON.stringify(sha256Hex(r.operationId).slice(0, 16)),
    payload: r,
  };
}

/**
 * Azure DPS-compatible registration (the REST shape `azure-iot-provisioning-device-http` speaks):
 * `PUT /{idScope}/registrations/{registrationId}/register` answers 202 `{operationId, status: "assigning"}` with
 * `retry-after`; `GET .../operations/{operationId}` answers `{status: "assigned", registrationState}` whose `payload`
 * carries our RegistrationResult (certificates, trust bundle). Attestation: X.509 (TLS client certificate) or
 * symmetric key (SAS over `sr` exactly as received, key derived from the group key). Responses are application/json.
 */
export const dpsRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store, metrics }) => {
  const svc = new RegistrationService(ca, new EnrollmentStore(store, groupKeyVault(ca.keys)));
  app.setErrorHandler((err: FastifyError | EdgeTrustError, req, reply) => {
    let e: EdgeTrustError;
    if (err instanceof EdgeTrustError) e = err;
    else if ((err as FastifyError).validation) e = new EdgeTrustError("INVALID_INPUT", err.message);
    else if ((err as FastifyError).statusCode === 429) e = new EdgeTrustError("RATE_LIMITED", "rate limit exceeded", { hint: "retry later" });
    else if (typeof (err as FastifyError).statusCode === "number" && ((err as FastifyError).statusCode ?? 500) < 500) e = new EdgeTrustError("INVALID_INPUT", err.message);
    else {
      req.log.error({ err }, "DPS request failed");
      e = new EdgeTrustError("INTERNAL", "internal error", { hint: `see the server log for request ${req.id}` });
    }
    return dpsError(reply, req, e);
  });

  app.put<{ Params: Static<typeof RegisterParams>; Body: Static<typeof RegisterBody>; Querystring: Static<typeof Query> }>("/:idScope/registrations/:registrationId/register", { config: { auth: "bootstrap" },
    schema: { summary: "DPS-compatible registration (X.509 or symmetric-key attestation)", tags: ["dps"], params: RegisterParams, querystring: Query, body: RegisterBody },
  }, async (req, reply) => {
    const { idScope, registrationId } = req.params;
    if (req.body.registrationId !== registrationId) throw new EdgeTrustError("INVALID_INPUT", "body registrationId differs from the path");
    if (req.body.tpm) throw new EdgeTrustError("FORBIDDEN", "TPM attestation is not supported by this service", { hint: "use X.509 or symmetric-key attestation" });
    const cred = registrationCredential(req, idScope);
    if (cred.kind === "none") throw new EdgeTrustError("UNAUTHENTICATED", "DPS registration needs a SAS token or an X.509 client certificate");
    const payload = req.body.payload;
    if (!payload?.csr) throw new EdgeTrustError("INVALID_INPUT", "send the device's CSR in the registration payload: setProvisioningPayload({ csr, edgeCaCsr })");
    // DPS has no idempotency header: the request itself is the key, so a retried identical request is a replay.
    const key = `dps:${sha256Hex(JSON.stringify([payload.csr.trim(), payload.edgeCaCsr?.trim() ?? null]))}`;
    const out = await svc.register({ registrationId, csr: payload.csr, ...(payload.edgeCaCsr ? { edgeCaCsr: payload.edgeCaCsr } : {}), idempotencyKey: key, credential: cred, channel: "dps" });
    if (!out.replayed) metrics.issued.inc({ profile: "registration", kind: "dps" });
    reply.code(202).header("retry-after", RETRY_AFTER_SECONDS).type("application/json; charset=utf-8");
    return { operationId: out.result.operationId, status: "assigning" };
  });

  app.get<{ Params: Static<typeof OperationParams>; Querystring: Static<typeof Query> }>("/:idScope/registrations/:registrationId/operations/:operationId", { config: { auth: "bootstrap" },
    schema: { summary: "DPS-compatible operation status", tags: ["dps"], params: OperationParams, querystring: Query },
  }, async (req, reply) => {
    const { idScope, registrationId, operationId } = req.params;
    await svc.authenticate(registrationId, registrationCredential(req, idScope));
    const rec = await svc.operation(registrationId, operationId);
    reply.type("application/json; charset=utf-8");
    if (rec.status === "assigning") {
      reply.code(202).header("retry-after", RETRY_AFTER_SECONDS);
      return { operationId, status: "assigning" };
    }
    if (rec.status === "failed") {
      return { operationId, status: "failed", registrationState: { registrationId, status: "failed", errorCode: 400001, errorMessage: rec.error ?? "registration failed" } };
    }
    return { operationId, status: "assigned", registrationState: registrationState(rec.result as RegistrationResult) };
  });
};
