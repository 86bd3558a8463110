import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkcs11js from "pkcs11js";
import type { Handle } from "pkcs11js";
import { EdgeTrustError } from "../common/index.js";
import { acquireModule, releaseModule } from "./pkcs11-module.js";
import { listTokens, mapPkcs11Error } from "./pkcs11.js";

/** Debian's SoftHSM2 module. */
export const SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so";

export interface InitTokenOptions {
  module: string;
  label: string;
  soPin: string;
  userPin: string;
  /** SoftHSM only: SOFTHSM2_CONF to use. It must be in the environment before the module is first initialised. */
  softhsmConf?: string;
}

/**
 * Initialise a token in the first slot that has no initialised token (SoftHSM always offers one), then set its user
 * PIN: C_InitToken, then C_Login(SO) + C_InitPIN. Returns the label. Fails with HSM_KEY_EXISTS-like clarity when a
 * token with that label already exists.
 */
export function initToken(opts: InitTokenOptions): { label: string; slot: string } {
  if (opts.softhsmConf !== undefined) process.env.SOFTHSM2_CONF = opts.softhsmConf;
  if (!opts.label || Buffer.byteLength(opts.label) > 32) {
    throw new EdgeTrustError("INVALID_INPUT", "a token label must be 1 to 32 bytes", { hint: "pick a shorter token label" });
  }
  if (!opts.soPin || !opts.userPin) {
    throw new EdgeTrustError("HSM_PIN_MISSING", "initialising a token needs both an SO PIN and a user PIN", {
      hint: "give --so-pin-file and --pin-file (or set the PIN environment variables)",
    });
  }
  const mod = acquireModule(opts.module);
  const p11 = mod.p11;
  try {
    const existing = listTokens(mod);
    if (existing.some((t) => t.label === opts.label)) {
      throw new EdgeTrustError("CONFLICT", `a token labelled ${JSON.stringify(opts.label)} already exists`, {
        hint: "use it as it is, or pick another label",
      });
    }
    let free: Handle | undefined;
    try {
      for (const slot of p11.C_GetSlotList(true)) {
        const info = p11.C_GetTokenInfo(slot);
        if (!(info.flags & pkcs11js.CKF_TOKEN_INITIALIZED)) {
          free = slot;
          break;
        }
      }
    } catch (e) {
      throw mapPkcs11Error(e, "listing slots");
    }
    if (!free) {
      throw new EdgeTrustError("HSM_TOKEN_NOT_FOUND", "no slot with an uninitialised token is available", {
        hint: "free a slot (SoftHSM: softhsm2-util --delete-token) or re-initialise an existing token with the vendor's tool",
      });
    }
    try {
      // pkcs11js pads a short label with NULs; PKCS#11 wants it blank-padded to 32 bytes.
      p11.C_InitToken(free, opts.soPin, opts.label.padEnd(32 - (Buffer.byteLength(opts.label) - opts.label.length), " "));
      const s = p11.C_OpenSession(free, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      try {
        p11.C_Login(s, pkcs11js.CKU_SO, opts.soPin);
        p11.C_InitPIN(s, opts.userPin);
        p11.C_Logout(s);
      } finally {
        p11.C_CloseSession(s);
      }
    } catch (e) {
      throw mapPkcs11Error(e, `initialising token ${JSON.stringify(opts.label)}`, opts.soPin);
    }
    // SoftHSM moves an initialised token to a new slot id on the next C_Initialize; report the current one.
    return { label: opts.label, slot: free.toString("hex") };
  } finally {
    releaseModule(mod);
  }
}

export interface SoftHsmDir {
  dir: string;
  tokenDir: string;
  /** Path of the softhsm2.conf written for this directory. */
  conf: string;
  /** Remove the directory. Close every key store on it first. */
  cleanup(): void;
}

/**
 * A private SoftHSM token directory with its own softhsm2.conf, for tests and demos. With `activate` (default true)
 * SOFTHSM2_CONF is set in this process: SoftHSM reads it at C_Initialize, so do this before the first key store opens
 * (one directory per test file; vitest runs files in separate processes).
 */
export function createSoftHsmDir(opts: { parent?: string; activate?: boolean } = {}): SoftHsmDir {
  const dir = mkdtempSync(join(opts.parent ?? tmpdir(), "edgetrust-softhsm-"));
  const tokenDir = join(dir, "tokens");
  mkdirSync(tokenDir, { mode: 0o700 });
  const conf = join(dir, "softhsm2.conf");
  writeFileSync(conf, `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`, { mode: 0o600 });
  if (opts.activate ?? true) process.env.SOFTHSM2_CONF = conf;
  return { dir, tokenDir, conf, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
