import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { EdgeTrustError } from "../../../common/index.js";
import { actorOf, problemResponses, requireRole, SecurityBearer } from "../../http.js";
import { requireDevice } from "../../device-auth.js";
import type { RouteDeps } from "../../shared/route-deps.js";
import { DeploymentStore } from "../store.js";
import { recordReport } from "../../fleet/record.js";

/** The device `requireDevice` authenticated (the TLS handshake proved the key of its identity certificate). */
function authenticatedDevice(req: FastifyRequest): string {
  if (!req.deviceId) throw new EdgeTrustError("INTERNAL", "device route without requireDevice");
  return req.deviceId;
}

const JwsBody = Type.Object(
  {
    payload: Type.String({ minLength: 1, maxLength: 400_000 }),
    signatures: Type.Array(Type.Object({}, { additionalProperties: true }), { minItems: 1, maxItems: 32 }),
  },
  { additionalProperties: false, description: "a deployment manifest as JWS General JSON Serialization, signed offline by the security team" },
);
const DeploymentView = Type.Object({
  deploymentId: Type.String(),
  version: Type.Integer(),
  targets: Type.Array(Type.String()),
  payloadSha256: Type.String(),
  uploadedBy: Type.String(),
  uploadedAt: Type.String(),
});
const DeviceDeployment = Type.Object({ deploymentId: Type.String(), version: Type.Integer(), jws: Type.String() });
const Report = Type.Object(
  {
    at: Type.String({ format: "date-time" }),
    kind: Type.Union([Type.Literal("manifest-accepted"), Type.Literal("manifest-rejected"), Type.Literal("module-status"), Type.Literal("last-known-good"), Type.Literal("deployment-failed")]),
    deviceId: Type.String({ maxLength: 128 }),
    deploymentId: Type.Optional(Type.String({ maxLength: 128 })),
    version: Type.Optional(Type.Integer({ minimum: 0 })),
    reasons: Type.Optional(Type.Array(Type.String({ maxLength: 2048 }), { maxItems: 100 })),
    warnings: Type.Optional(Type.Array(Type.String({ maxLength: 2048 }), { maxItems: 100 })),
    modules: Type.Optional(Type.Array(Type.Object({
      name: Type.String({ maxLength: 64 }),
      state: Type.String({ maxLength: 32 }),
      containerId: Type.Optional(Type.String({ maxLength: 64 })),
      imageDigest: Type.String({ maxLength: 80 }),
      restarts: Type.Integer({ minimum: 0 }),
      reason: Type.Optional(Type.String({ maxLength: 2048 })),
    }, { additionalProperties: false }), { maxItems: 256 })),
  },
  { additionalProperties: false },
);
const ReportHeaders = Type.Object({ "idempotency-key": Type.Optional(Type.String({ minLength: 8, maxLength: 128, pattern: "^[\\x21-\\x7e]+$" })) });
const DeviceParams = Type.Object({ deviceId: Type.String({ pattern: "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$" }) });

/**
 * Deployments: the security team uploads signed manifests; a device fetches the newest one that targets it, over
 * mTLS with its identity certificate, and reports what it did with it.
 */
export const deploymentRoutes: FastifyPluginAsync<RouteDeps> = async (app, { store }) => {
  const deployments = new DeploymentStore(store);

  app.put<{ Body: Static<typeof JwsBody> }>("/v1/deployments", {
    onRequest: requireRole(store, "admin"),
    schema: { summary: "Upload a signed deployment manifest", tags: ["deployments"], security: SecurityBearer, body: JwsBody, response: { 200: DeploymentView, 201: DeploymentView, ...problemResponses(400, 401, 403, 409) } },
  }, async (req, reply) => {
    const { record, created } = await deployments.upload(JSON.stringify(req.body), actorOf(req));
    const { jws: _jws, ...view } = record;
    return reply.code(created ? 201 : 200).send(view);
  });

  app.get("/v1/deployments", {
    onRequest: requireRole(store, "admin", "auditor"),
    schema: { summary: "List uploaded deployments", tags: ["deployments"], security: SecurityBearer, response: { 200: Type.Object({ deployments: Type.Array(DeploymentView) }), ...problemResponses(401, 403) } },
  }, async () => ({ deployments: (await deployments.list()).map(({ jws: _jws, ...v }) => v) }));

  app.get("/v1/device/deployment", {
    onRequest: requireDevice(store),
    schema: { summary: "The newest deployment targeting the calling device (mTLS)", tags: ["devices"], response: { 200: DeviceDeployment, 204: Type.Null(), ...problemResponses(401, 403) } },
  }, async (req, reply) => {
    const deviceId = authenticatedDevice(req);
    const d = await deployments.latestFor(deviceId);
    if (!d) return reply.code(204).send();
    return { deploymentId: d.deploymentId, version: d.version, jws: d.jws };
  });

  app.post<{ Body: Static<typeof Report>; Headers: Static<typeof ReportHeaders> }>("/v1/device/reports", {
    onRequest: requireDevice(store),
    schema: { summary: "Report manifest verdicts and module states (mTLS); an Idempotency-Key makes a retried report count once", tags: ["devices"], body: Report, headers: ReportHeaders, response: { 202: Type.Object({ id: Type.String() }), ...problemResponses(400, 401, 403) } },
  }, async (req, reply) => {
    const deviceId = authenticatedDevice(req);
    if (req.body.deviceId !== deviceId) throw new EdgeTrustError("FORBIDDEN", `device ${deviceId} cannot report for ${req.body.deviceId}`);
    const id = await deployments.addReport(deviceId, req.body.kind, req.body, req.headers["idempotency-key"]);
    await recordReport(store, deviceId, req.body);
    return reply.code(202).send({ id });
  });

  app.get<{ Params: Static<typeof DeviceParams> }>("/v1/devices/:deviceId/reports", {
    onRequest: requireRole(store, "admin", "auditor"),
    schema: { summary: "What a device reported", tags: ["devices"], security: SecurityBearer, params: DeviceParams, response: { 200: Type.Object({ reports: Type.Array(Type.Object({ id: Type.String(), kind: Type.String(), body: Type.Unknown(), receivedAt: Type.String() })) }), ...problemResponses(401, 403) } },
  }, async (req) => ({ reports: await deployments.reports(req.params.deviceId) }));
};
