export type { KeyAlgorithm, HashAlgorithm, SignatureScheme, KeyRef, KeyInfo, PublicKeyExport, KeyStore } from "./types.js";
export { KEY_ALGORITHMS, defaultScheme } from "./types.js";
export { HsmConfig } from "./config.js";
