import { Type, type Static } from "@sinclair/typebox";

/** `ca.attestation:` — the remote attestation verifier. */
export const AttestationConfig = Type.Object(
  {
    referenceFile: Type.String({ default: "", description: "YAML/JSON reference values (agent, policy, trust-root, manifest and module image digests); empty = every measurement is only a warning" }),
    nonceTtlSeconds: Type.Integer({ minimum: 1, maximum: 3600, default: 120, description: "How long a verifier nonce may be used (once)" }),
    resultTtlSeconds: Type.Integer({ minimum: 10, maximum: 86400, default: 600, description: "Validity of the signed EAR attestation result" }),
    requiredForRenewal: Type.Boolean({ default: false, description: "POST /v1/renew needs a fresh `affirming` result (header X-Edgetrust-Attestation) for the same device" }),
  },
  { additionalProperties: false, default: {}, description: "Remote attestation verifier (/v1/attestation/nonce, /v1/attestation/verify)" },
);
export type AttestationConfig = Static<typeof AttestationConfig>;
