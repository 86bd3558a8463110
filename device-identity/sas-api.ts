import type { Logger } from "../common/index.js";
import { answerShapes, sasVerifyBody } from "../identity-api/index.js";
import type { Route } from "./api-server.js";
import type { SasKeys } from "./sas.js";

/**
 * `POST /v1/sas/verify` on the management socket: the hub asks whether a module's SAS token is genuine. The key stays
 * in the HSM; the answer is the module and its attestation, or 403 with the reason. The token itself is never logged.
 */
export function sasVerifyRoute(sas: SasKeys, log: Logger): Route {
  return {
    method: "POST", path: "/v1/sas/verify", body: sasVerifyBody, answers: { 200: answerShapes.sasVerifyAnswer },
    handler: async (req) => {
      try {
        return await sas.verify((req.body as { token: string }).token);
      } catch (e) {
        log.warn({ reason: (e as Error).message }, "SAS token refused");
        throw e;
      }
    },
  };
}
