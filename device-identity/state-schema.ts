import { Type, type Static } from "@sinclair/typebox";
import { AttestedModuleSchema } from "../identity-api/index.js";

const Pem = Type.String({ pattern: "^-----BEGIN CERTIFICATE-----" });

/** Everything the device holds about its identity, as one document (state.json of a generation). */
export const IdentityStateSchema = Type.Object(
  {
    version: Type.Literal(1),
    generation: Type.Integer({ minimum: 1 }),
    deviceId: Type.String({ minLength: 1 }),
    trustDomain: Type.String({ minLength: 1 }),
    /** HSM labels of the keys in use. */
    keys: Type.Object({ device: Type.String(), edgeCa: Type.String(), hub: Type.String() }, { additionalProperties: false }),
    device: Type.Object({ cert: Pem, chain: Type.Array(Pem) }, { additionalProperties: false }),
    edgeCa: Type.Object(
      {
        cert: Pem,
        chain: Type.Array(Pem),
        /** Earlier Edge CA certificates still valid: kept in the trust bundle so certificates they issued keep working. */
        previous: Type.Array(Pem),
      },
      { additionalProperties: false },
    ),
    hub: Type.Object({ cert: Pem }, { additionalProperties: false }),
    /** Roots and issuing CAs as the cloud CA serves them (/v1/cas/bundle.pem). */
    caBundle: Type.Array(Pem, { minItems: 1 }),
    updatedAt: Type.String(),
  },
  { additionalProperties: false },
);
export type IdentityState = Static<typeof IdentityStateSchema>;

/** attested-modules.json: the registered modules, each checked on its own (StoredModuleSchema) to name the bad one. */
export const AttestedModulesFileSchema = Type.Object({ modules: Type.Array(Type.Unknown()) });
/** A stored registration: the input plus when it was made (an Intersect would trip over additionalProperties: false). */
export const StoredModuleSchema = Type.Object({ ...AttestedModuleSchema.properties, registeredAt: Type.String() }, { additionalProperties: false });
