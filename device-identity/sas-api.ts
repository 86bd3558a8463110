import type { FastifyInstance } from "fastify";
import type { Logger } from "../common/index.js";
import { SasVerifyRequest, SasVerifyResponse } from "../identity-api/index.js";
import type { SasKeys } from "./sas.js";

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
