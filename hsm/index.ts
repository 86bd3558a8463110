export type { KeyAlgorithm, HashAlgorithm, SignatureScheme, KeyRef, KeyInfo, PublicKeyExport, KeyStore } from "./types.js";
export { KEY_ALGORITHMS, defaultScheme } from "./types.js";
export { Pkcs11MacKeys, SoftwareMacKeys } from "./mac.js";
export type { MacKeyStore } from "./mac.js";
export { HsmConfig } from "./config.js";
// PKCS#11 backend, the factory, URIs and token set-up helpers (tests, demo).
export { openKeyStore, openPkcs11 } from "./open.js";
export type { OpenKeyStoreOptions } from "./open.js";
export { Pkcs11KeyStore, mapPkcs11Error, listTokens, findToken } from "./pkcs11.js";
export type { Pkcs11StoreOptions, TokenSlot } from "./pkcs11.js";
export { parsePkcs11Uri, formatPkcs11Uri, parseKeyRef, isPkcs11Uri } from "./pkcs11-uri.js";
export type { Pkcs11Uri, Pkcs11ObjectType } from "./pkcs11-uri.js";
export { readPin } from "./pin.js";
export type { PinSource } from "./pin.js";
export { SOFTHSM_MODULE, initToken, createSoftHsmDir } from "./token-setup.js";
export type { InitTokenOptions, SoftHsmDir } from "./token-setup.js";
// Development software store, WebCrypto shim for X.509 signing with KeyStore keys.
export { SoftwareKeyStore, algorithmOf } from "./software.js";
export type { SoftwareKeyStoreOptions } from "./software.js";
export { keyStoreCrypto, keyStoreCryptoKey, keyStorePublicCryptoKey, keyStoreKeyPair, isKeyStoreCryptoKey } from "./webcrypto.js";
export type { KeyStoreCryptoKeyOptions } from "./webcrypto.js";
export { TPM2_PKCS11_MODULE, startSwtpm } from "./token-setup.js";
export type { Swtpm } from "./token-setup.js";
export { runDoctor } from "./doctor.js";
export type { DoctorCheck, DoctorResult, DoctorOptions } from "./doctor.js";
// TLS key source: Node TLS options whose private key stays in the token (OpenSSL pkcs11 engine).
export { tlsKeyOptions, tlsKeyFromSpec, currentKeyLabel, engineKeyIdentifier, engineConfig, createTlsSecureContext, describeTlsKey, usePkcs11Module, DEFAULT_ENGINE, ENGINE_ID } from "./tls.js";
export type { TlsKeyOptions, TlsKeySourceOptions } from "./tls.js";
