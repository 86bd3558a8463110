import { existsSync, realpathSync, statSync } from "node:fs";
import pkcs11js from "pkcs11js";
import { EdgeTrustError } from "../common/index.js";

/**
 * One loaded, initialised PKCS#11 module per path per process. PKCS#11 allows exactly one C_Initialize per
 * application; every store and helper that talks to a module goes through `acquireModule`/`releaseModule`, so the
 * module is initialised (with CKF_OS_LOCKING_OK: pkcs11js calls into it from libuv worker threads) on first use and
 * finalised when its last user releases it.
 *
 * The shared library itself stays loaded after C_Finalize: unloading a module that links its own libcrypto (SoftHSM)
 * risks its exit handlers running after the code is gone. A later acquire re-runs C_Initialize, which is also when
 * SoftHSM re-reads SOFTHSM2_CONF.
 */
export interface LoadedModule {
  readonly path: string;
  readonly p11: pkcs11js.PKCS11;
}

interface Entry extends LoadedModule {
  refs: number;
  initialized: boolean;
  /** False when something else in this process had already initialised the module: then we never finalise it. */
  ownsInit: boolean;
  /** SOFTHSM2_CONF in effect at C_Initialize, to report a test mixing token directories in one process. */
  softhsmConf: string | undefined;
}

const registry = new Map<string, Entry>();

export function pkcs11ErrorName(e: unknown): string | undefined {
  if (e instanceof Error) {
    const m = /\b(CKR_[A-Z0-9_]+)\b/.exec(e.message);
    if (m) return m[1];
  }
  return undefined;
}

export function acquireModule(modulePath: string): LoadedModule {
  if (!modulePath) {
    throw new EdgeTrustError("HSM_MODULE_NOT_FOUND", "no PKCS#11 module path is configured", {
      hint: "set hsm.module (or --module) to the module's .so, e.g. /usr/lib/softhsm/libsofthsm2.so",
    });
  }
  if (!existsSync(modulePath)) {
    throw new EdgeTrustError("HSM_MODULE_NOT_FOUND", `PKCS#11 module ${modulePath} does not exist`, {
      hint: "install the module (Debian: softhsm2, libtpm2-pkcs11-1 or the HSM vendor's package) or fix hsm.module",
    });
  }
  if (!statSync(modulePath).isFile()) {
    throw new EdgeTrustError("HSM_MODULE_LOAD_FAILED", `PKCS#11 module path ${modulePath} is not a file`, {
      hint: "point hsm.module at the module's shared library (.so), not a directory",
    });
  }
  const key = realpathSync(modulePath);
  let entry = registry.get(key);
  if (!entry) {
    const p11 = new pkcs11js.PKCS11();
    try {
      p11.load(key);
    } catch (e) {
      throw new EdgeTrustError("HSM_MODULE_LOAD_FAILED", `PKCS#11 module ${modulePath} could not be loaded: ${e instanceof Error ? e.message : String(e)}`, {
        hint: "check that the file is a PKCS#11 shared library for this architecture and that its dependencies are installed (ldd)",
        cause: e,
      });
    }
    entry = { path: key, p11, refs: 0, initialized: false, ownsInit: false, softhsmConf: undefined };
    registry.set(key, entry);
  }
  if (!entry.initialized) {
    try {
      entry.p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
      entry.ownsInit = true;
    } catch (e) {
      if (pkcs11ErrorName(e) !== "CKR_CRYPTOKI_ALREADY_INITIALIZED") {
        throw new EdgeTrustError("HSM_MODULE_LOAD_FAILED", `PKCS#11 module ${modulePath} failed to initialise: ${pkcs11ErrorName(e) ?? String(e)}`, {
          hint: "check the module's own configuration (SoftHSM: SOFTHSM2_CONF and its tokendir must exist and be writable)",
          cause: e,
        });
      }
      entry.ownsInit = false;
    }
    entry.initialized = true;
    entry.softhsmConf = process.env.SOFTHSM2_CONF;
  } else if (entry.softhsmConf !== process.env.SOFTHSM2_CONF && /softhsm/i.test(key)) {
    throw new EdgeTrustError("HSM_OPERATION_FAILED", "SoftHSM is already initialised in this process with another SOFTHSM2_CONF", {
      hint: "close every key store first (SoftHSM reads SOFTHSM2_CONF only at C_Initialize), or use one token directory per process",
    });
  }
  entry.refs++;
  return entry;
}

export function releaseModule(mod: LoadedModule): void {
  const entry = registry.get(mod.path);
  if (!entry || entry.refs === 0) return;
  entry.refs--;
  if (entry.refs === 0 && entry.initialized) {
    entry.initialized = false;
    if (entry.ownsInit) {
      try {
        entry.p11.C_Finalize();
      } catch {
        // finalising a module that is going away anyway: nothing useful to report
      }
    }
  }
}

/** For tests and doctor: how many users a module currently has (0 when not loaded). */
export function moduleRefCount(modulePath: string): number {
  try {
    return registry.get(realpathSync(modulePath))?.refs ?? 0;
  } catch {
    return 0;
  }
}

/** Every object matching `tmpl`, in batches of 64 (the one search loop of hsm/: key store and MAC keys). Errors raw. */
export function findObjects(p11: pkcs11js.PKCS11, s: pkcs11js.Handle, tmpl: pkcs11js.Template): pkcs11js.Handle[] {
  const out: pkcs11js.Handle[] = [];
  p11.C_FindObjectsInit(s, tmpl);
  try {
    for (;;) {
      const batch = p11.C_FindObjects(s, 64);
      if (batch.length === 0) break;
      out.push(...batch);
    }
  } finally {
    p11.C_FindObjectsFinal(s);
  }
  return out;
}
