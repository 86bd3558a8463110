import { Type, type Static, type TSchema } from "@sinclair/typebox";

/**
 * The policy file schema (TypeBox). `policy.schema.json` is generated from `PolicySchema` (see json-schema.ts) and
 * committed for editors; a test keeps the two equal. Every object is closed (`additionalProperties: false`): an unknown
 * key is an error, never ignored. Omitted permissions mean "nothing allowed" (deny by default).
 */

const closed = { additionalProperties: false } as const;

/** A short name: rule ids, route names. */
const NamePattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/**
 * The one module-name grammar, everywhere a module is named (manifest, policy, the identity daemon's management
 * socket): lower-case letters, digits, `_` and `-`, starting with a letter or digit. A module name becomes a
 * container name, a URI path segment, a directory name and a topic level, so it has no `/`, no `.` and no case.
 */
export const ModuleNamePattern = "^[a-z0-9][a-z0-9_-]{0,62}$";
const ModuleName = Type.String({ pattern: ModuleNamePattern, description: "module name: a-z, 0-9, `_`, `-` (at most 63)" });
/** A glob over module names: the module-name characters and `*` (any run of them; never `/` or `..`). */
const ModuleNameGlob = Type.String({ pattern: "^[a-z0-9*][a-z0-9_*-]{0,62}$", description: "module name glob, `*` matches any run of module-name characters" });
/** A map keyed by module name: a key outside the grammar is an error, never an unchecked extra property. */
const byModuleName = <T extends TSchema>(value: T, description: string) => Type.Record(ModuleName, value, { additionalProperties: false, description });
/** host[:port] of a registry. */
const Registry = Type.String({
  pattern: "^(localhost|[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*)(:[0-9]{1,5})?$",
  description: "registry host[:port], e.g. 127.0.0.1:5000 or mcr.microsoft.com",
});
const RepositoryGlob = Type.String({
  pattern: "^[a-z0-9][a-z0-9._:/*-]{0,254}$",
  description: "registry/repository glob, e.g. 127.0.0.1:5000/edgetrust/*; `*` never crosses a `/`, a trailing `/**` does",
});
const Capability = Type.String({ pattern: "^CAP_[A-Z_]{2,32}$", description: "Linux capability, e.g. CAP_NET_BIND_SERVICE" });
const AbsPathGlob = Type.String({
  pattern: "^/[A-Za-z0-9._/*{}-]{0,254}$",
  description: "absolute path glob; `*` matches within one path segment, `{module}` is the module name",
});
const NetworkMode = Type.Union([Type.Literal("none"), Type.Literal("host"), Type.Literal("bridge")], { description: "container network mode" });
const UserSpec = Type.String({ pattern: "^([0-9]{1,10}|\\*)(:([0-9]{1,10}|\\*))?$", description: "uid[:gid]; `*` matches any non-root id" });

const BindRule = Type.Object(
  {
    source: AbsPathGlob,
    target: Type.Optional(AbsPathGlob),
    readOnly: Type.Optional(Type.Boolean({ description: "the bind must be mounted read-only (default true)" })),
  },
  { ...closed, description: "a host path a module may bind-mount" },
);

/** What a module may ask for. Every field omitted = the most restrictive value. */
export const ModulePermissionsSchema = Type.Object(
  {
    privileged: Type.Optional(Type.Boolean({ description: "may run privileged (default false)" })),
    capabilities: Type.Optional(Type.Array(Capability, { maxItems: 64, uniqueItems: true, description: "capabilities a module may add (default none)" })),
    binds: Type.Optional(Type.Array(BindRule, { maxItems: 64, description: "host paths a module may bind (default none)" })),
    devices: Type.Optional(Type.Array(AbsPathGlob, { maxItems: 64, uniqueItems: true, description: "host devices a module may map (default none)" })),
    network: Type.Optional(Type.Array(NetworkMode, { maxItems: 3, uniqueItems: true, description: "network modes allowed (default [none])" })),
    users: Type.Optional(Type.Array(UserSpec, { maxItems: 64, uniqueItems: true, description: "uid[:gid] a module may run as; root (0) only when listed literally (default none: user must be set and listed)" })),
    readOnlyRootfs: Type.Optional(Type.Union([Type.Literal("required"), Type.Literal("optional")], { description: "whether the root filesystem must be read-only (default required)" })),
    images: Type.Optional(Type.Array(RepositoryGlob, { maxItems: 64, uniqueItems: true, description: "repositories this module's image must come from (narrows images.repositories)" })),
    auth: Type.Optional(
      Type.Union([Type.Literal("x509"), Type.Literal("sas")], {
        description:
          "how the module authenticates to the hub: x509 (default: its own key, a certificate from its workload socket) or sas (unmodified Azure IoT Edge modules: IOTEDGE_* environment, SAS tokens signed with a per-module key kept in the HSM)",
      }),
    ),
  },
  closed,
);

const TrustKey = Type.Object(
  {
    kid: Type.String({ pattern: "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$", description: "key id (default: RFC 7638 thumbprint)" }),
    alg: Type.Union([Type.Literal("ES256"), Type.Literal("ES384"), Type.Literal("EdDSA")]),
    kty: Type.Union([Type.Literal("EC"), Type.Literal("OKP")]),
    crv: Type.Union([Type.Literal("P-256"), Type.Literal("P-384"), Type.Literal("Ed25519")]),
    x: Type.String({ pattern: "^[A-Za-z0-9_-]{32,128}$" }),
    y: Type.Optional(Type.String({ pattern: "^[A-Za-z0-9_-]{32,128}$" })),
    use: Type.Optional(Type.Literal("sig")),
  },
  { ...closed, description: "a public signer key as JWK, with its kid and its one algorithm" },
);
export type TrustKey = Static<typeof TrustKey>;

const TrustSection = Type.Union(
  [
    Type.Object(
      { trustRoot: Type.String({ minLength: 1, maxLength: 1024, description: "path of trust-root.json, relative to the policy file" }) },
      closed,
    ),
    Type.Object(
      {
        keys: Type.Array(TrustKey, { minItems: 1, maxItems: 32 }),
        threshold: Type.Integer({ minimum: 1, maximum: 32 }),
      },
      closed,
    ),
  ],
  { description: "who may sign deployment manifests: a trust root file, or keys + threshold inline" },
);

const TopicPattern = Type.String({
  pattern: "^[^\\u0000]{1,512}$",
  description: "MQTT topic filter; `+` one level, `#` the rest; `{device}` and `{module}` are the client's own ids",
});
const Principal = Type.Union([Type.Literal("module"), Type.Literal("device"), Type.Literal("leaf")]);
const HubRule = Type.Object(
  {
    id: Type.String({ pattern: NamePattern, description: "rule name shown in decisions" }),
    principals: Type.Array(Principal, { minItems: 1, uniqueItems: true, description: "who the rule is for" }),
    modules: Type.Optional(Type.Array(ModuleNameGlob, { maxItems: 64, description: "only these module names (module principals)" })),
    topics: Type.Array(TopicPattern, { minItems: 1, maxItems: 64 }),
  },
  closed,
);

const Duration = Type.String({ pattern: "^[1-9][0-9]{0,5}(m|h|d)$", description: "duration: <n>m, <n>h or <n>d" });
const KeyType = Type.Union([Type.Literal("EC-P256"), Type.Literal("EC-P384"), Type.Literal("RSA-2048"), Type.Literal("RSA-3072")]);
const CertProfile = Type.Object(
  {
    lifetime: Duration,
    renewAt: Type.Integer({ minimum: 1, maximum: 99, description: "renew when this % of the lifetime has passed" }),
    keyTypes: Type.Array(KeyType, { minItems: 1, uniqueItems: true }),
  },
  closed,
);
export const CERT_KINDS = ["device", "edgeCa", "module", "hub", "leaf"] as const;

const RedactRule = Type.Object(
  {
    path: Type.String({ pattern: "^[A-Za-z0-9_$-]{1,64}(\\.([A-Za-z0-9_$-]{1,64}|\\*)){0,15}$", description: "dotted path into the JSON body; `*` any key" }),
    action: Type.Union([Type.Literal("remove"), Type.Literal("hash")]),
    topics: Type.Optional(Type.Array(TopicPattern, { maxItems: 64, description: "only for these topics (default all upstream)" })),
  },
  closed,
);

const Sha256Digest = Type.String({ pattern: "^sha256:[0-9a-f]{64}$", description: "sha256:<64 lowercase hex>" });
const DigestList = Type.Array(Sha256Digest, { minItems: 1, maxItems: 256, uniqueItems: true });
const Severity = Type.Union([Type.Literal("warning"), Type.Literal("contraindicated")], { description: "the result a mismatch gives (default contraindicated)" });

/**
 * `attestation:` — reference values a remote attestation verifier (ca-service, `ca.attestation.policyFile`) appraises
 * device evidence against. An omitted claim is not appraised (its result is `warning`: nothing vouches for it).
 */
const AttestationSectionSchema = Type.Object(
  {
    agent: Type.Optional(Type.Array(Sha256Digest, { minItems: 1, maxItems: 256, uniqueItems: true, description: "agent/runtime builds allowed (sha256 of the measured agent file)" })),
    policy: Type.Optional(Type.Union([Type.Literal("self"), DigestList], { description: "`self` = the digest of this policy file, or a list of allowed policy digests" })),
    trustRoot: Type.Optional(Type.Union([Type.Literal("policy"), DigestList], { description: "`policy` = the digest of the file `trust.trustRoot` names, or a list of allowed trust-root digests" })),
    manifest: Type.Optional(
      Type.Object(
        {
          minVersion: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: "older accepted manifests are a rollback" }),
          digests: Type.Optional(Type.Union([Type.Literal("deployments"), DigestList], { description: "`deployments` = a manifest the verifier's deployment store serves, or a list of allowed manifest digests" })),
          absent: Type.Optional(Type.Union([Type.Literal("affirming"), Type.Literal("warning"), Type.Literal("contraindicated")], { description: "result for a device with no deployment yet (version 0); default warning" })),
        },
        { ...closed, description: "the device's accepted deployment manifest" },
      ),
    ),
    modules: Type.Optional(
      Type.Union(
        [
          Type.Literal("manifest"),
          byModuleName(DigestList, "per module name: allowed image digests; a module not listed is a mismatch, a listed one not running a warning"),
        ],
        { description: "`manifest` = every module must run exactly the digest the attested manifest pins, or image digests per module" },
      ),
    ),
    mismatch: Type.Optional(
      Type.Object(
        { agent: Type.Optional(Severity), policy: Type.Optional(Severity), trustRoot: Type.Optional(Severity), manifest: Type.Optional(Severity), modules: Type.Optional(Severity) },
        { ...closed, description: "per claim: is a mismatch `warning` or `contraindicated` (default contraindicated)" },
      ),
    ),
  },
  { ...closed, description: "reference values for remote attestation (appraised by ca-service)" },
);

export const PolicySchema = Type.Object(
  {
    $schema: Type.Optional(Type.String({ maxLength: 1024 })),
    version: Type.Literal(1, { description: "policy format version" }),
    mode: Type.Union([Type.Literal("enforce"), Type.Literal("audit")], { description: "audit: policy denials are reported, not enforced" }),
    trust: TrustSection,
    images: Type.Object(
      {
        registries: Type.Array(Registry, { maxItems: 64, uniqueItems: true, description: "registries images may come from (default none)" }),
        repositories: Type.Optional(Type.Array(RepositoryGlob, { maxItems: 256, uniqueItems: true, description: "repositories allowed (default: any in the allowed registries)" })),
      },
      { ...closed, description: "images are always pinned by sha256 digest; these narrow where from" },
    ),
    modules: Type.Object(
      {
        allow: Type.Array(ModuleNameGlob, { maxItems: 256, description: "module names that may run at all (default none)" }),
        defaults: Type.Optional(ModulePermissionsSchema),
        overrides: Type.Optional(byModuleName(ModulePermissionsSchema, "per module name; each key replaces the default")),
      },
      closed,
    ),
    hub: Type.Optional(
      Type.Object(
        {
          publish: Type.Optional(Type.Array(HubRule, { maxItems: 256 })),
          subscribe: Type.Optional(Type.Array(HubRule, { maxItems: 256 })),
        },
        { ...closed, description: "topic ACL; what no rule allows is refused" },
      ),
    ),
    certificates: Type.Optional(
      Type.Object(
        {
          device: Type.Optional(CertProfile),
          edgeCa: Type.Optional(CertProfile),
          module: Type.Optional(CertProfile),
          hub: Type.Optional(CertProfile),
          leaf: Type.Optional(CertProfile),
        },
        closed,
      ),
    ),
    privacy: Type.Optional(
      Type.Object({ redact: Type.Array(RedactRule, { maxItems: 256 }) }, { ...closed, description: "fields removed or hashed before messages go upstream" }),
    ),
    attestation: Type.Optional(AttestationSectionSchema),
  },
  { ...closed, $id: "https://edgetrust.dev/schemas/policy.schema.json", title: "edgetrust policy" },
);

export type Policy = Static<typeof PolicySchema>;
export type ModulePermissions = Static<typeof ModulePermissionsSchema>;
type HubRule = Static<typeof HubRule>;
type CertProfile = Static<typeof CertProfile>;
export type RedactRule = Static<typeof RedactRule>;
type NetworkMode = Static<typeof NetworkMode>;



/** Hard caps on a deployment manifest: checked before and while parsing, so a hostile file costs bounded work. */
export const MANIFEST_LIMITS = {
  /** The whole JWS JSON text. */
  maxJwsBytes: 256 * 1024,
  /** The decoded payload (its base64url form must fit in maxJwsBytes with the signatures). */
  maxPayloadBytes: 160 * 1024,
  maxSignatures: 16,
  /** The decoded protected header of one signature. */
  maxProtectedHeaderBytes: 1024,
  maxModules: 64,
  maxRoutes: 256,
  maxTargets: 1024,
  maxEnv: 128,
  maxListItems: 64,
  maxString: 1024,
  maxEnvValue: 4096,
} as const;

const L = MANIFEST_LIMITS;
const ShortString = Type.String({ minLength: 1, maxLength: L.maxString });

/** What a manifest asks for one module's container. Unknown options are errors: no option is ever ignored. */
export const ModuleOptionsSchema = Type.Object(
  {
    privileged: Type.Optional(Type.Boolean()),
    capabilities: Type.Optional(Type.Array(Type.String({ pattern: "^CAP_[A-Z_]{2,32}$" }), { maxItems: L.maxListItems })),
    binds: Type.Optional(Type.Array(Type.String({ pattern: "^/[^:\\u0000]{0,510}:/[^:\\u0000]{0,510}(:(ro|rw))?$" }), { maxItems: L.maxListItems })),
    devices: Type.Optional(Type.Array(Type.String({ pattern: "^/dev/[^:\\u0000]{1,250}(:/dev/[^:\\u0000]{1,250})?$" }), { maxItems: L.maxListItems })),
    network: Type.Optional(NetworkMode),
    user: Type.Optional(Type.String({ pattern: "^[0-9]{1,10}(:[0-9]{1,10})?$" })),
    readOnlyRootfs: Type.Optional(Type.Boolean()),
  },
  closed,
);
export type ModuleOptions = Static<typeof ModuleOptionsSchema>;

/** name@sha256:<64 hex>; the name is registry/repository (a registry host is required). */
export const PinnedImagePattern = "^[a-z0-9][a-z0-9.-]*(:[0-9]{1,5})?/[a-z0-9._/-]{1,255}@sha256:[a-f0-9]{64}$";

export const ManifestModuleSchema = Type.Object(
  {
    image: Type.String({ maxLength: 512 }),
    options: Type.Optional(ModuleOptionsSchema),
    env: Type.Optional(Type.Record(Type.String({ pattern: "^[A-Za-z_][A-Za-z0-9_]{0,127}$" }), Type.String({ maxLength: L.maxEnvValue }), closed)),
    restartPolicy: Type.Union([Type.Literal("always"), Type.Literal("on-failure"), Type.Literal("on-unhealthy"), Type.Literal("never")]),
    startupOrder: Type.Integer({ minimum: 0, maximum: 1000 }),
  },
  closed,
);
export type ManifestModule = Static<typeof ManifestModuleSchema>;

export const ManifestSchema = Type.Object(
  {
    schemaVersion: Type.Literal(1),
    deploymentId: Type.String({ pattern: "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$" }),
    version: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    issuedAt: Type.String({ format: "date-time", maxLength: 64 }),
    expiresAt: Type.String({ format: "date-time", maxLength: 64 }),
    targets: Type.Array(Type.String({ pattern: "^[A-Za-z0-9*][A-Za-z0-9._*-]{0,127}$" }), { minItems: 1, maxItems: L.maxTargets }),
    modules: byModuleName(ManifestModuleSchema, "the modules to run, by name"),
    routes: Type.Optional(Type.Record(Type.String({ pattern: NamePattern }), ShortString, closed)),
  },
  closed,
);
export type Manifest = Static<typeof ManifestSchema>;

/** trust-root.json payload (the signed part). */
export const TrustRootBodySchema = Type.Object(
  {
    type: Type.Literal("edgetrust-trust-root"),
    version: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    expires: Type.String({ format: "date-time", maxLength: 64 }),
    threshold: Type.Integer({ minimum: 1, maximum: 32 }),
    keys: Type.Array(TrustKey, { minItems: 1, maxItems: 32 }),
  },
  closed,
);
export type TrustRootBody = Static<typeof TrustRootBodySchema>;

/** `policy test` case file. */
const ModuleOptionsCase = Type.Object(
  {
    name: ModuleName,
    image: Type.Optional(Type.String({ maxLength: 512 })),
    options: Type.Optional(ModuleOptionsSchema),
    expect: Type.Union([Type.Literal("allow"), Type.Literal("deny")]),
  },
  closed,
);
export const CaseFileSchema = Type.Object(
  {
    cases: Type.Array(
      Type.Union([
        Type.Object({ name: Type.String({ maxLength: 200 }), module: ModuleOptionsCase }, closed),
        Type.Object(
          {
            name: Type.String({ maxLength: 200 }),
            topic: Type.Object(
              {
                principal: Principal,
                device: Type.String({ pattern: NamePattern }),
                module: Type.Optional(ModuleName),
                action: Type.Union([Type.Literal("publish"), Type.Literal("subscribe")]),
                topic: Type.String({ minLength: 1, maxLength: 512 }),
                expect: Type.Union([Type.Literal("allow"), Type.Literal("deny")]),
              },
              closed,
            ),
          },
          closed,
        ),
        Type.Object(
          {
            name: Type.String({ maxLength: 200 }),
            image: Type.Object(
              { image: Type.String({ maxLength: 512 }), module: Type.Optional(ModuleName), expect: Type.Union([Type.Literal("allow"), Type.Literal("deny")]) },
              closed,
            ),
          },
          closed,
        ),
      ]),
      { minItems: 1, maxItems: 10_000 },
    ),
  },
  closed,
);
export type CaseFile = Static<typeof CaseFileSchema>;
