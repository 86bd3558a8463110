/** policy/: policy files, the trust root, signed deployment manifests, decisions with reasons. */
import "./validators.js";
export { loadPolicy, parsePolicy } from "./policy.js";
export { MANIFEST_LIMITS, ModuleNamePattern } from "./schema.js";
export type { Policy, RedactRule, Manifest, ManifestModule } from "./schema.js";
export { decideTopic, parsePinnedImage, moduleAuth } from "./decide.js";
/** MQTT topic-filter match (`+` one level, `#` the rest; a leading wildcard never matches a `$` topic), as the hub rules use it. */
export { topicMatches, nameGlobMatch } from "./match.js";
export { parseTrustRoot, resolveTrust, signTrustRoot } from "./trust-root.js";
export type { TrustRoot } from "./trust-root.js";
export { signManifest, verifyManifest, validateManifest, ManifestStateStore } from "./manifest.js";
export type { Verdict } from "./manifest.js";
export { signerFromPrivateKey, addSignature } from "./sign.js";
export type { JwsSigner } from "./sign.js";
export { MANIFEST_TYP, parseGeneralJws, decodePayload } from "./jws.js";
export type { GeneralJws } from "./jws.js";
export { explainPolicy } from "./explain.js";
