import { createPublicKey, randomBytes, verify } from "node:crypto";
import pkcs11js from "pkcs11js";
import { EdgeTrustError, isEdgeTrustError, type Logger } from "../common/index.js";
import type { HsmConfig } from "./config.js";
import { openKeyStore } from "./open.js";
import { readPin } from "./pin.js";
import { acquireModule, releaseModule } from "./pkcs11-module.js";
import { Pkcs11KeyStore, findToken, trimLabel } from "./pkcs11.js";
import type { KeyRef, KeyStore } from "./types.js";
import { defaultScheme } from "./types.js";

/**
 * `edgetrust hsm doctor`: the checks, in order, that the key store needs to work. Each check depends on the ones
 * before it, so the first failure stops the run; every failure carries one sentence saying what to do.
 */
interface DoctorCheck {
  name: "module" | "token" | "pin" | "mechanisms" | "key" | "backend";
  ok: boolean;
  detail: string;
  /** One sentence: what to do. Only on failure. */
  fix?: string;
  code?: string;
}

interface DoctorResult {
  ok: boolean;
  checks: DoctorCheck[];
}

interface DoctorOptions {
  /** The key to find and sign with; the key check is skipped without it. */
  key?: KeyRef;
  pin?: string;
  logger?: Logger;
  env?: NodeJS.ProcessEnv;
}

function failed(name: DoctorCheck["name"], e: unknown): DoctorCheck {
  if (isEdgeTrustError(e)) return { name, ok: false, detail: e.message, fix: e.hint ?? "see the error code", code: e.code };
  return { name, ok: false, detail: e instanceof Error ? e.message : String(e), fix: "rerun with EDGETRUST_LOG_LEVEL=debug and report the error", code: "INTERNAL" };
}

export async function runDoctor(config: HsmConfig, opts: DoctorOptions = {}): Promise<DoctorResult> {
  const checks: DoctorCheck[] = [];
  const done = () => ({ ok: checks.every((c) => c.ok), checks });

  if (config.backend !== "pkcs11") {
    let store: KeyStore | undefined;
    try {
      const o: Parameters<typeof openKeyStore>[1] = {};
      if (opts.logger) o.logger = opts.logger;
      store = await openKeyStore(config, o);
      checks.push({ name: "backend", ok: true, detail: `software key store at ${config.softwareDir} opens (development only)` });
    } catch (e) {
      checks.push(failed("backend", e));
      return done();
    }
    try {
      if (opts.key) checks.push(await keyCheck(store, opts.key));
    } finally {
      await store.close();
    }
    return done();
  }

  // 1. module: the path exists and the library loads and initialises.
  try {
    const mod = acquireModule(config.module);
    try {
      const info = mod.p11.C_GetInfo();
      checks.push({ name: "module", ok: true, detail: `${config.module} loads (${trimLabel(info.libraryDescription)} ${info.libraryVersion.major}.${info.libraryVersion.minor}, ${trimLabel(info.manufacturerID)})` });
      // 2. token: one initialised token carries the label.
      try {
        const t = findToken(mod, config.tokenLabel);
        checks.push({ name: "token", ok: true, detail: `token ${JSON.stringify(t.label)} found (${trimLabel(t.info.model)}, serial ${trimLabel(t.info.serialNumber)})` });
      } catch (e) {
        checks.push(failed("token", e));
      }
    } finally {
      releaseModule(mod);
    }
  } catch (e) {
    checks.push(failed("module", e));
  }
  if (!checks.every((c) => c.ok)) return done();

  // 3. PIN: it is configured and the token accepts it (one login attempt, never retried).
  let store: Pkcs11KeyStore;
  try {
    const pin = opts.pin ?? readPin({ pinFile: config.pinFile, pinEnv: config.pinEnv, env: opts.env ?? process.env });
    const o: Parameters<typeof Pkcs11KeyStore.open>[0] = { module: config.module, tokenLabel: config.tokenLabel, pin, sessionPoolSize: 1 };
    if (opts.logger) o.logger = opts.logger;
    store = await Pkcs11KeyStore.open(o);
    checks.push({ name: "pin", ok: true, detail: `user login to ${JSON.stringify(config.tokenLabel)} succeeds` });
  } catch (e) {
    checks.push(failed("pin", e));
    return done();
  }

  try {
    // 4. mechanisms edgetrust needs: EC key generation and ECDSA (with or without token hashing).
    const need: [string, boolean][] = [
      ["CKM_EC_KEY_PAIR_GEN", store.hasMechanism(pkcs11js.CKM_EC_KEY_PAIR_GEN)],
      ["CKM_ECDSA or CKM_ECDSA_SHA256", store.hasMechanism(pkcs11js.CKM_ECDSA) || store.hasMechanism(pkcs11js.CKM_ECDSA_SHA256)],
    ];
    const missing = need.filter(([, ok]) => !ok).map(([n]) => n);
    if (missing.length) {
      checks.push({
        name: "mechanisms",
        ok: false,
        detail: `token lacks ${missing.join(" and ")}`,
        fix: "use a token that supports EC P-256 key generation and ECDSA signing (SoftHSM2, tpm2-pkcs11 and most HSMs do)",
        code: "HSM_MECHANISM_UNSUPPORTED",
      });
      return done();
    }
    const optional = [
      ["CKM_ECDSA_SHA256", pkcs11js.CKM_ECDSA_SHA256], ["CKM_RSA_PKCS_KEY_PAIR_GEN", pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN], ["CKM_RSA_PKCS_PSS", pkcs11js.CKM_RSA_PKCS_PSS],
    ] as const;
    const extra = optional.filter(([, m]) => store.hasMechanism(m)).map(([n]) => n);
    checks.push({ name: "mechanisms", ok: true, detail: `EC key generation and ECDSA supported${extra.length ? `; also ${extra.join(", ")}` : ""}` });

    // 5. the named key exists and signs verifiably.
    if (opts.key) checks.push(await keyCheck(store, opts.key));
  } finally {
    await store.close();
  }
  return done();
}

async function keyCheck(store: KeyStore, ref: KeyRef): Promise<DoctorCheck> {
  try {
    const info = await store.getKey(ref);
    const pub = await store.getPublicKey(ref);
    const scheme = defaultScheme(info.algorithm);
    const msg = randomBytes(32);
    const sig = await store.sign(ref, scheme, msg);
    const key = createPublicKey({ key: pub.spki, format: "der", type: "spki" });
    const hash = scheme.hash.replace("SHA-", "sha");
    const ok = scheme.name === "ECDSA" ? verify(hash, msg, { key, dsaEncoding: "ieee-p1363" }, sig) : verify(hash, msg, key, sig);
    if (!ok) {
      throw new EdgeTrustError("HSM_OPERATION_FAILED", `key ${JSON.stringify(info.label)} produced a signature that does not verify with its public key`, {
        hint: "the public and private objects do not match; regenerate the key pair",
      });
    }
    return { name: "key", ok: true, detail: `key ${JSON.stringify(info.label)} (${info.algorithm}, id ${info.id}) signs and verifies; ${info.extractable ? "EXTRACTABLE" : "not extractable"}` };
  } catch (e) {
    return failed("key", e);
  }
}
