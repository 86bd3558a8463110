import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import * as x509 from "@peculiar/x509";
import * as jose from "jose";
import { EdgeTrustError, createLogger } from "../common/index.js";
import {
  ENGINE_ID, Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, engineConfig, initToken, keyStoreCrypto, keyStoreKeyPair, tlsKeyOptions, type KeyStore,
} from "../hsm/index.js";

/** TLS client-key options for a device's mTLS agent: a PEM key, or the OpenSSL pkcs11 engine and the key's URI. */
export type DeviceTlsKey = { key: string } | { privateKeyEngine: string; privateKeyIdentifier: string };

/** One simulated device's identity key: what the device's life needs from it, wherever it lives. */
export interface DeviceKey {
  /** SubjectPublicKeyInfo, base64 DER (the provisioning line's `publicKey` credential). */
  spki: string;
  csr(commonName: string): Promise<string>;
  /** A compact JWS (ES256) over `payload` with `header` (evidence). */
  signJws(header: Record<string, unknown>, payload: Record<string, unknown>): Promise<string>;
  tls(): Promise<DeviceTlsKey>;
  /** Forget the key (the token holds one per device only while it lives). */
  dispose(): Promise<void>;
}

export interface DeviceKeySource {
  readonly kind: "software" | "softhsm";
  create(deviceId: string): Promise<DeviceKey>;
  close(): Promise<void>;
}

const ES256 = { name: "ECDSA", hash: "SHA-256" } as const;

/** WebCrypto P-256 keys in this process (the default: fast, nothing to set up). */
export function softwareKeys(): DeviceKeySource {
  return {
    kind: "software",
    create: async () => {
      const keys = (await globalThis.crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
      const spki = Buffer.from(await globalThis.crypto.subtle.exportKey("spki", keys.publicKey)).toString("base64");
      const keyPem = x509.PemConverter.encode(await globalThis.crypto.subtle.exportKey("pkcs8", keys.privateKey), "PRIVATE KEY");
      return {
        spki,
        csr: async (cn) => (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: ES256 })).toString("pem"),
        signJws: (header, payload) => new jose.CompactSign(new TextEncoder().encode(JSON.stringify(payload))).setProtectedHeader({ ...header, alg: "ES256" }).sign(keys.privateKey),
        tls: () => Promise.resolve({ key: keyPem }),
        dispose: () => Promise.resolve(),
      };
    },
    close: () => Promise.resolve(),
  };
}

/** Does this process's OPENSSL_CONF register the pkcs11 engine (needed before Node starts for more than one TLS context)? */
export function pkcs11EngineRegistered(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env.OPENSSL_CONF && env.EDGETRUST_FLEET_ENGINE_CONF === env.OPENSSL_CONF);
}

/**
 * An OpenSSL configuration registering the pkcs11 engine over SoftHSM, written to a private temporary file: the
 * environment (`OPENSSL_CONF`, `EDGETRUST_FLEET_ENGINE_CONF`) a process needs, from its start, for `softHsmKeys`.
 */
export function pkcs11EngineEnvironment(): Record<string, string> {
  const file = join(mkdtempSync(join(tmpdir(), "et-fleet-openssl-")), "openssl.cnf");
  writeFileSync(file, engineConfig({ module: SOFTHSM_MODULE }), { mode: 0o600 });
  return { OPENSSL_CONF: file, EDGETRUST_FLEET_ENGINE_CONF: file };
}

/**
 * Device keys in SoftHSM: a token of the simulator's own (a new token directory and a random PIN, never another
 * token), one P-256 key per device made in the token (never extractable); the CSR and the evidence are signed by the
 * token, and the device's mTLS connections use the key through OpenSSL's pkcs11 engine, so it never leaves the token.
 * Needs the engine registered from the process's start (`pkcs11EngineEnvironment`).
 */
export async function softHsmKeys(): Promise<DeviceKeySource> {
  if (!pkcs11EngineRegistered()) {
    throw new EdgeTrustError("INVALID_CONFIG", "device keys in SoftHSM need the OpenSSL pkcs11 engine registered when the process starts", { hint: "run through `edgetrust fleet simulate --hsm`, which sets OPENSSL_CONF for itself" });
  }
  const dir = createSoftHsmDir();
  const pin = randomBytes(12).toString("hex");
  const tokenLabel = `et-fleet-sim-${randomBytes(3).toString("hex")}`;
  initToken({ module: SOFTHSM_MODULE, label: tokenLabel, soPin: `so-${pin}`, userPin: pin });
  const logger = createLogger("fleet", { level: "error", destination: new Writable({ write(_c, _e, cb) { cb(); } }) });
  const store: KeyStore = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel, pin, logger });
  const crypto = keyStoreCrypto();
  return {
    kind: "softhsm",
    create: async (deviceId) => {
      const label = `device-${deviceId}`;
      await store.generateKey(label, "EC-P256");
      const keys = await keyStoreKeyPair(store, { label });
      const spki = (await store.getPublicKey({ label })).spki.toString("base64");
      return {
        spki,
        csr: async (cn) => (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: ES256 }, crypto)).toString("pem"),
        // jose cannot sign with a token key: the signing input is built with jose's base64url and signed by the token (P1363 r||s is JWS's form).
        signJws: async (header, payload) => {
          const input = `${jose.base64url.encode(JSON.stringify({ ...header, alg: "ES256" }))}.${jose.base64url.encode(JSON.stringify(payload))}`;
          const sig = await store.sign({ label }, ES256, Buffer.from(input, "ascii"));
          return `${input}.${jose.base64url.encode(sig)}`;
        },
        tls: () => tlsKeyOptions(store, { label }, { engine: ENGINE_ID, pin, module: SOFTHSM_MODULE, tokenLabel }),
        dispose: () => store.delete({ label }),
      };
    },
    close: async () => {
      await store.close();
      dir.cleanup();
    },
  };
}
