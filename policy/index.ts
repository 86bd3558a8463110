/** policy/: policy files, the trust root, signed deployment manifests, decisions with reasons. */
export { loadPolicy, parsePolicy, MAX_POLICY_BYTES } from "./policy.js";
export type { LoadedPolicy } from "./policy.js";
export { PolicySchema, AttestationSectionSchema, CaseFileSchema, ManifestSchema, ModuleOptionsSchema, TrustRootBodySchema, MANIFEST_LIMITS, CERT_KINDS, PinnedImagePattern, ModuleNamePattern } from "./schema.js";
export type { Policy, AttestationSection, AttestationSeverity, ModulePermissions, HubRule, CertProfile, RedactRule, Manifest, ManifestModule, ModuleOptions, TrustKey, TrustRootBody, CertKind, CaseFile } from "./schema.js";
export { decideModuleOptions, decideImage, decideTopic, parsePinnedImage, moduleAuth } from "./decide.js";
export type { Decision, RuleHit, HubIdentity, ParsedImage } from "./decide.js";
/** MQTT topic-filter match (`+` one level, `#` the rest; a leading wildcard never matches a `$` topic), as the hub rules use it. */
export { topicMatches, nameGlobMatch } from "./match.js";
export { loadTrustRoot, parseTrustRoot, resolveTrust, verifyTrustRootRotation, signTrustRoot, trustRootExpired } from "./trust-root.js";
export type { TrustRoot, RotationResult } from "./trust-root.js";
export { signManifest, verifyManifest, validateManifest, ManifestStateStore, ManifestStateSchema, MAX_CLOCK_SKEW_MS } from "./manifest.js";
export type { Verdict, VerdictReason, VerifyOptions, ManifestState, Check } from "./manifest.js";
export { signerFromKeyFile, signerFromPrivateKey, signerFromKeyStore, trustKeyFromJwk, addSignature } from "./sign.js";
export type { JwsSigner } from "./sign.js";
export { ACCEPTED_ALGS, MANIFEST_TYP, TRUST_ROOT_TYP, verifyJwsSignature, rawVerify, parseGeneralJws, decodePayload } from "./jws.js";
export type { GeneralJws, JwsAlg } from "./jws.js";
export { explainPolicy, runCases } from "./explain.js";
export type { CaseResult } from "./explain.js";
export { policyJsonSchema, policyJsonSchemaText } from "./json-schema.js";
