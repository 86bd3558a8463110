import type { FastifyInstance } from "fastify";
import { Type } from "@sinclair/typebox";
import type { Logger } from "../common/index.js";
import type { SasKeys } from "./sas.js";

export const SasVerifyRequest = Type.Object({ token: Type.String({ minLength: 1, maxLength: 2048 }) }, { additionalProperties: false });
export const SasVerifyResponse = Type.Object({
  deviceId: Type.String(),
  moduleId: Type.String(),
  generationId: Type.String(),
  expiresAt: Type.Integer({ description: "unix seconds" }),
  imageDigest: Type.String(),
  manifestVersion: Type.Integer(),
  host: Type.String(),
});

/**
 * `POST /v1/sas/verify` on the management socket: the hub asks whether a module's SAS token is genuine. The key stays
 * in the HSM; the answer is the module and its attestation, or 403 with the reason. The token itself is never logged.
 */
export function addSasVerifyRoute(app: FastifyInstance, sas: SasKeys, log: Logger): void {
  app.post("/v1/sas/verify", { schema: { body: SasVerifyRequest, response: { 200: SasVerifyResponse } } }, async (req) => {
    try {
      return await sas.verify((req.body as { token: string }).token);
    } catch (e) {
      log.warn({ reason: (e as Error).message }, "SAS token refused");
      throw e;
    }
  });
}
