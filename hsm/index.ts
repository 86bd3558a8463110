export type { KeyAlgorithm, HashAlgorithm, SignatureScheme, KeyRef, KeyInfo, PublicKeyExport, KeyStore } from "./types.js";
export { KEY_ALGORITHMS, defaultScheme } from "./types.js";
export type { MacKeyStore } from "./mac.js";
export { HsmConfig } from "./config.js";
// PKCS#11 backend, the factory, URIs and token set-up helpers (tests, demo).
export { openKeyStore } from "./open.js";
export { Pkcs11KeyStore } from "./pkcs11.js";
export { parseKeyRef } from "./pkcs11-uri.js";
export { readPin } from "./pin.js";
export { SOFTHSM_MODULE, initToken, createSoftHsmDir } from "./token-setup.js";
export type { SoftHsmDir } from "./token-setup.js";
// Development software store, WebCrypto shim for X.509 signing with KeyStore keys.
export { SoftwareKeyStore } from "./software.js";
export { keyStoreCrypto, keyStoreCryptoKey, keyStorePublicCryptoKey, keyStoreKeyPair, keyStoreKeyOf } from "./webcrypto.js";
export { startSwtpm } from "./token-setup.js";
export type { Swtpm } from "./token-setup.js";
// TLS key source: Node TLS options whose private key stays in the token (OpenSSL pkcs11 engine).
export { tlsKeyOptions, tlsKeyFromSpec, tlsCredentialsFromFile, engineConfig, createTlsSecureContext, DEFAULT_ENGINE, ENGINE_ID } from "./tls.js";
export type { TlsKeyOptions } from "./tls.js";
