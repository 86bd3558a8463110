import { EdgeTrustError, createLogger, type Logger } from "../common/index.js";
import { openKeyStore, type HsmConfig, type KeyStore } from "../hsm/index.js";
import { loadPolicy } from "../policy/index.js";
import { CertificateAuthority, overridesFromPolicy, type ProfileOverrides } from "./ca.js";
import type { CaConfig } from "./config.js";
import { CaStore } from "./store.js";
import { openCaStore } from "./store-identity.js";

interface OpenCaOptions {
  /** Use this key store instead of opening the one `hsm` describes (tests, embedding). */
  keys?: KeyStore;
  /** Extra profile overrides, applied over the policy file's `certificates:` section. */
  profiles?: ProfileOverrides;
  logger?: Logger;
  /** The config file the configuration came from: the CA identity file sits beside it (store-identity.ts). */
  configFile?: string;
  /**
   * false: open the store as it is — no migration, no identity check. Only for a `ca serve` worker, whose primary
   * ran both before forking it (cluster.ts).
   */
  startupChecks?: boolean;
}

interface OpenedCa {
  store: CaStore;
  keys: KeyStore;
  ca?: CertificateAuthority;
  close(): Promise<void>;
}

/** Open the CA store (migrating it) and the key store; refuses the software key store unless allowed. */
export async function openCaStores(config: CaConfig, hsm: HsmConfig, opts: OpenCaOptions = {}): Promise<{ store: CaStore; keys: KeyStore }> {
  const log = opts.logger ?? createLogger("ca-service");
  if (!opts.keys && hsm.backend === "software" && !config.allowSoftwareKeys) {
    throw new EdgeTrustError("INVALID_CONFIG", "CA keys in the software key store are refused", {
      hint: "use hsm.backend: pkcs11 (SoftHSM2 in development), or set ca.allowSoftwareKeys: true for development only",
    });
  }
  const store = opts.startupChecks === false
    ? await CaStore.open({ databaseUrl: config.databaseUrl, sqlitePath: config.sqlitePath, schema: config.databaseSchema, groupCommit: config.groupCommit, migrate: false })
    : await openCaStore(config, { ...(opts.configFile ? { configFile: opts.configFile } : {}), logger: log });
  try {
    const keys = opts.keys ?? (await openKeyStore(hsm, { logger: log }));
    return { store, keys };
  } catch (e) {
    await store.close();
    throw e;
  }
}

function profileOverrides(config: CaConfig, extra: ProfileOverrides = {}): ProfileOverrides {
  const fromPolicy = config.policyFile ? overridesFromPolicy(loadPolicy(config.policyFile).policy.certificates) : {};
  const out: ProfileOverrides = { ...fromPolicy };
  for (const [k, v] of Object.entries(extra) as [keyof ProfileOverrides, ProfileOverrides[keyof ProfileOverrides]][]) out[k] = { ...out[k], ...v };
  return out;
}

/** Open stores and load the CA engine with the config's options and the policy's profile overrides. */
export async function openCa(config: CaConfig, hsm: HsmConfig, opts: OpenCaOptions = {}): Promise<Required<Pick<OpenedCa, "ca">> & OpenedCa> {
  const { store, keys } = await openCaStores(config, hsm, opts);
  try {
    const ca = await CertificateAuthority.load(store, keys, {
      trustDomain: config.trustDomain,
      publicBaseUrl: config.publicBaseUrl,
      crlValidityHours: config.crlValidityHours,
      ocspValidityMinutes: config.ocspValidityMinutes,
      renewAfterExpiryDays: config.renewAfterExpiryDays,
      profiles: profileOverrides(config, opts.profiles),
      ...(opts.logger ? { logger: opts.logger } : {}),
    });
    return { store, keys, ca, close: async () => { await store.close(); if (!opts.keys) await keys.close(); } };
  } catch (e) {
    await store.close();
    if (!opts.keys) await keys.close();
    throw e;
  }
}
