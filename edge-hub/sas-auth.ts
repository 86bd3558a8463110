import { isEdgeTrustError } from "../common/index.js";
import { moduleAuth, type Policy } from "../policy/index.js";
import type { AttestationSource, SasVerifyAnswer } from "../identity-api/index.js";
import type { ClientIdentity } from "./verify.js";

/**
 * SAS authentication of modules the policy grants `auth: sas` (unmodified Azure IoT Edge modules). The hub holds no
 * key: the identity daemon checks the token with the module's HMAC key in the HSM (`ManagementClient.verifySas`).
 * On top of the daemon's verdict the hub checks what only the connection shows — the MQTT client id and user name
 * name the same module as the token — and what it is responsible for itself: its own policy grants SAS to that
 * module, and the module's attestation is the one the token was verified against.
 */
export interface SasTokenVerifier {
  verifySas(token: string): Promise<SasVerifyAnswer>;
}

export type SasRejectReason = "no-certificate" | "sas-refused" | "sas-not-granted" | "sas-identity-mismatch" | "not-attested" | "attestation-mismatch";

type SasResult = { ok: true; identity: ClientIdentity } | { ok: false; reason: SasRejectReason; detail: string };

interface SasConnect {
  clientId: string;
  username: string | undefined;
  password: Buffer | undefined;
}

export async function authenticateSas(
  o: { verifier: SasTokenVerifier; policy: Policy; attestation: AttestationSource; deviceId: string },
  c: SasConnect,
): Promise<SasResult> {
  const token = c.password?.toString("utf8") ?? "";
  if (!token.startsWith("SharedAccessSignature ")) return { ok: false, reason: "no-certificate", detail: "the client presented no certificate and no SAS token" };
  let v: SasVerifyAnswer;
  try {
    v = await o.verifier.verifySas(token);
  } catch (e) {
    // The daemon's reason (expired, not this module's key, not registered, not granted) — never the token.
    const detail = isEdgeTrustError(e) ? e.message : `the identity daemon could not check the token: ${(e as Error).message}`;
    return { ok: false, reason: "sas-refused", detail };
  }
  const key = `${v.deviceId}/${v.moduleId}`;
  if (v.deviceId !== o.deviceId) return { ok: false, reason: "sas-identity-mismatch", detail: `token of device ${v.deviceId}; this hub serves ${o.deviceId}` };
  if (c.clientId !== key) return { ok: false, reason: "sas-identity-mismatch", detail: `client id ${JSON.stringify(c.clientId.slice(0, 64))} is not the token's module ${key}` };
  if (!(c.username ?? "").startsWith(`${v.host}/${key}/`)) {
    return { ok: false, reason: "sas-identity-mismatch", detail: `user name does not start with ${v.host}/${key}/ as the token's resource does` };
  }
  if (moduleAuth(o.policy, v.moduleId) !== "sas") {
    return { ok: false, reason: "sas-not-granted", detail: `policy gives module ${v.moduleId} auth x509: it must present its certificate` };
  }
  const current = o.attestation.current(v.deviceId, v.moduleId);
  if (!current) return { ok: false, reason: "not-attested", detail: `module ${v.moduleId} is not registered as attested` };
  if (current.imageDigest !== v.imageDigest || current.manifestVersion !== v.manifestVersion) {
    return { ok: false, reason: "attestation-mismatch", detail: `token verified for ${v.imageDigest} (v${v.manifestVersion}), module now runs ${current.imageDigest} (v${current.manifestVersion})` };
  }
  return {
    ok: true,
    identity: {
      principal: "module", deviceId: v.deviceId, moduleId: v.moduleId, key,
      uri: `sas://${v.host}/devices/${v.deviceId}/modules/${v.moduleId}`,
      serial: `sas-generation-${v.generationId}`,
      notAfter: new Date(v.expiresAt * 1000),
      attestation: { imageDigest: v.imageDigest, manifestVersion: v.manifestVersion },
    },
  };
}

/** Does the policy grant SAS to any module? Only then does the hub take connections without a certificate to CONNECT. */
export function policyGrantsSas(policy: Policy): boolean {
  return policy.modules.defaults?.auth === "sas" || Object.values(policy.modules.overrides ?? {}).some((o) => o.auth === "sas");
}
