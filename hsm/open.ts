import { EdgeTrustError, type Logger } from "../common/index.js";
import type { HsmConfig } from "./config.js";
import { readPin } from "./pin.js";
import { Pkcs11KeyStore, type Pkcs11StoreOptions } from "./pkcs11.js";
import type { KeyStore } from "./types.js";

interface OpenKeyStoreOptions {
  /** The user PIN, when the caller already has it; otherwise it comes from config.pinFile / config.pinEnv. */
  pin?: string;
  /** Software backend passphrase, when the caller already has it; otherwise from config.softwarePassphraseEnv. */
  passphrase?: string;
  logger?: Logger;
  env?: NodeJS.ProcessEnv;
}

/** What the software backend (hsm/software.ts) offers the factory. Loaded lazily: production builds may omit it. */
interface SoftwareBackend {
  SoftwareKeyStore: {
    open(o: { dir: string; passphrase?: string; passphraseEnv?: string; logger?: Logger }): Promise<KeyStore>;
  };
}

/** The key store the `hsm:` config section describes. */
export async function openKeyStore(config: HsmConfig, opts: OpenKeyStoreOptions = {}): Promise<KeyStore> {
  switch (config.backend) {
    case "pkcs11":
      return openPkcs11(config, opts);
    case "software": {
      const spec = "./software.js";
      let backend: SoftwareBackend;
      try {
        backend = (await import(spec)) as SoftwareBackend;
      } catch (e) {
        throw new EdgeTrustError("INVALID_CONFIG", "the software key store is not available in this build", {
          hint: "use hsm.backend: pkcs11 (SoftHSM2 for development)",
          cause: e,
        });
      }
      const o: { dir: string; passphrase?: string; passphraseEnv?: string; logger?: Logger } = {
        dir: config.softwareDir,
        passphraseEnv: config.softwarePassphraseEnv,
      };
      if (opts.passphrase !== undefined) o.passphrase = opts.passphrase;
      if (opts.logger) o.logger = opts.logger;
      return backend.SoftwareKeyStore.open(o);
    }
    default: {
      const b = (config as { backend: unknown }).backend;
      throw new EdgeTrustError("INVALID_CONFIG", `unknown key store backend ${JSON.stringify(b)}`, { hint: "set hsm.backend to pkcs11 or software" });
    }
  }
}

async function openPkcs11(config: HsmConfig, opts: OpenKeyStoreOptions = {}): Promise<Pkcs11KeyStore> {
  const pin = opts.pin ?? readPin({ pinFile: config.pinFile, pinEnv: config.pinEnv, env: opts.env ?? process.env });
  const o: Pkcs11StoreOptions = {
    module: config.module,
    tokenLabel: config.tokenLabel,
    pin,
    sessionPoolSize: config.sessionPoolSize,
  };
  if (opts.logger) o.logger = opts.logger;
  return Pkcs11KeyStore.open(o);
}
