import { Type, type Static } from "@sinclair/typebox";
import { ModuleNamePattern } from "../policy/index.js";
import { GENERATION_ID_PATTERN } from "./workload.js";

/**
 * The management socket's wire schemas (root-only unix socket of the device identity daemon): the daemon validates
 * requests against them and serialises answers through them; `ManagementClient` validates every answer against them.
 */

export const ModuleName = Type.String({ pattern: ModuleNamePattern, description: "module name from the manifest" });

/** What the agent vouches for when it registers a module: the container it created from a verified manifest. */
export const AttestedModuleSchema = Type.Object(
  {
    name: ModuleName,
    containerId: Type.String({ pattern: "^[0-9a-f]{64}$", description: "Docker container ID" }),
    imageRepository: Type.String({ minLength: 1, maxLength: 255, pattern: "^[a-z0-9][a-z0-9._:/-]*$" }),
    imageDigest: Type.String({ pattern: "^sha256:[0-9a-f]{64}$" }),
    manifestVersion: Type.Integer({ minimum: 1 }),
    deploymentId: Type.String({ minLength: 1, maxLength: 128, pattern: "^[A-Za-z0-9._-]+$" }),
    uid: Type.Integer({ minimum: 0, maximum: 4294967294, description: "uid the module runs as (owns its socket)" }),
    gid: Type.Integer({ minimum: 0, maximum: 4294967294 }),
    auth: Type.Optional(Type.Union([Type.Literal("x509"), Type.Literal("sas")], { description: "how the module authenticates to the hub (policy grant); default x509" })),
    generationId: Type.Optional(Type.String({ pattern: GENERATION_ID_PATTERN, description: "IOTEDGE_MODULEGENERATIONID the agent gave this container (required with auth: sas)" })),
  },
  { additionalProperties: false },
);
export type AttestedModuleInput = Static<typeof AttestedModuleSchema>;

/** A registered module as the management API shows it (uid and gid stay inside the daemon). */
export const ModuleViewSchema = Type.Object({
  name: Type.String(),
  containerId: Type.String(),
  imageRepository: Type.String(),
  imageDigest: Type.String(),
  manifestVersion: Type.Integer(),
  deploymentId: Type.String(),
  registeredAt: Type.String(),
  /** The module's workload socket: mount its directory into that module's container only. */
  socketPath: Type.String(),
  auth: Type.Optional(Type.String()),
  generationId: Type.Optional(Type.String()),
});
export type ModuleView = Static<typeof ModuleViewSchema>;
export const ModuleListSchema = Type.Object({ modules: Type.Array(ModuleViewSchema) });

export const NameParams = Type.Object({ name: ModuleName }, { additionalProperties: false });
export const DeregisterQuery = Type.Object({ reason: Type.Optional(Type.String({ maxLength: 200 })) }, { additionalProperties: false });

/** What changed about a module's attestation, in the hub's terms (see `AttestationSource`). */
export const ModuleEventSchema = Type.Object({
  seq: Type.Integer(),
  type: Type.Union([Type.Literal("registered"), Type.Literal("updated"), Type.Literal("deregistered")]),
  module: Type.String(),
  at: Type.String(),
  /** deregistered: why. */
  reason: Type.Optional(Type.String()),
});
export type ModuleEvent = Static<typeof ModuleEventSchema>;

export const EventsQuery = Type.Object(
  { after: Type.Integer({ minimum: 0, default: 0 }), waitSeconds: Type.Integer({ minimum: 0, maximum: 60, default: 0 }) },
  { additionalProperties: false },
);
/** `next`: pass as `after` next time. `gap`: events were dropped before `after`, resynchronise with the module list. */
export const EventsPageSchema = Type.Object({ epoch: Type.String(), events: Type.Array(ModuleEventSchema), next: Type.Integer(), gap: Type.Boolean() });
export type EventsPage = Static<typeof EventsPageSchema>;

export const RenewKindSchema = Type.Union([Type.Literal("device"), Type.Literal("edge-ca"), Type.Literal("hub")]);
export type RenewKind = Static<typeof RenewKindSchema>;
export const RenewBody = Type.Object({ kind: RenewKindSchema, rekey: Type.Boolean({ default: false }) }, { additionalProperties: false });

export const EvidenceBody = Type.Object({ nonce: Type.String({ minLength: 16, maxLength: 128, pattern: "^[A-Za-z0-9_-]+$" }) }, { additionalProperties: false });
export const EvidenceResponse = Type.Object({ evidence: Type.String() });

/** `GET /v1/status` and `POST /v1/renew`: the daemon's own report, an object whose fields it documents (README). */
export const ReportSchema = Type.Record(Type.String(), Type.Unknown());

/** `POST /v1/sas/verify`: the hub asks whether a module's SAS token is genuine; the answer is the module and its attestation. */
export const SasVerifyRequest = Type.Object({ token: Type.String({ minLength: 1, maxLength: 2048 }) }, { additionalProperties: false });
export const SasVerifyResponse = Type.Object({
  deviceId: Type.String(),
  moduleId: Type.String(),
  generationId: Type.String(),
  expiresAt: Type.Integer({ description: "unix seconds" }),
  imageDigest: Type.String(),
  manifestVersion: Type.Integer(),
  /** The `host` part of the token's resource (the hub compares it with the MQTT user name's). */
  host: Type.String(),
});
export type SasVerifyAnswer = Static<typeof SasVerifyResponse>;
