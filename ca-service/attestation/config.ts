import { Type, type Static } from "@sinclair/typebox";

/** `ca.attestation:` — the remote attestation verifier. */
export const AttestationConfig = Type.Object(
  {
    policyFile: Type.String({ default: "", description: "Policy file whose `attestation:` section holds the reference values (policy: self, trustRoot: policy, manifest, modules, mismatch severities); re-read for every appraisal" }),
    referenceFile: Type.String({ default: "", description: "Legacy: a YAML/JSON file of reference values (agent, policy, trust-root, manifest and module image digests); not together with policyFile; both empty = every measurement is only a warning" }),
    nonceTtlSeconds: Type.Integer({ minimum: 1, maximum: 3600, default: 120, description: "How long a verifier nonce may be used (once)" }),
    resultTtlSeconds: Type.Integer({ minimum: 10, maximum: 86400, default: 600, description: "Validity of the signed EAR attestation result" }),
    requiredForRenewal: Type.Boolean({ default: false, description: "POST /v1/renew needs a fresh `affirming` result (header X-Edgetrust-Attestation) for the same device" }),
  },
  { additionalProperties: false, default: {}, description: "Remote attestation verifier (/v1/attestation/nonce, /v1/attestation/verify)" },
);
export type AttestationConfig = Static<typeof AttestationConfig>;
