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

interface InitTokenOptions {
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

/** Debian's tpm2-pkcs11 module (libtpm2-pkcs11-1). */
export const TPM2_PKCS11_MODULE = "/usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1";

export interface Swtpm {
  port: number;
  ctrlPort: number;
  /** Environment for tpm2-pkcs11 (TCTI + store directory); set it before the module is first initialised. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

async function listenable(port: number): Promise<number> {
  const { createServer } = await import("node:net");
  return new Promise((resolvePort) => {
    const srv = createServer();
    srv.once("error", () => resolvePort(-1));
    srv.listen(port, "127.0.0.1", () => {
      const addr = srv.address();
      const got = typeof addr === "object" && addr ? addr.port : -1;
      srv.close(() => resolvePort(got));
    });
  });
}

/** A loopback port p with p+1 also free: the swtpm TCTI always uses the next port for swtpm's control channel. */
async function freePortPair(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const p = await listenable(0);
    if (p > 0 && p < 65535 && (await listenable(p + 1)) === p + 1) return p;
  }
  throw new EdgeTrustError("UNAVAILABLE", "no two adjacent free loopback ports for swtpm", { hint: "free some local ports and retry" });
}

/**
 * Start a software TPM 2.0 (swtpm) on loopback with its state and a tpm2-pkcs11 store under `dir`, for tests and the
 * demo. Resolves once the TPM answers on its port.
 */
export async function startSwtpm(dir: string): Promise<Swtpm> {
  const { spawn } = await import("node:child_process");
  const { connect } = await import("node:net");
  const state = join(dir, "tpm-state");
  const store = join(dir, "tpm2-pkcs11-store");
  mkdirSync(state, { recursive: true, mode: 0o700 });
  mkdirSync(store, { recursive: true, mode: 0o700 });
  const port = await freePortPair();
  const ctrlPort = port + 1;
  const child = spawn("swtpm", [
    "socket", "--tpm2",
    "--server", `type=tcp,port=${port},bindaddr=127.0.0.1`,
    "--ctrl", `type=tcp,port=${ctrlPort},bindaddr=127.0.0.1`,
    "--flags", "not-need-init,startup-clear",
    "--tpmstate", `dir=${state}`,
  ], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const c = connect(port, "127.0.0.1");
      c.once("connect", () => { c.destroy(); r(true); });
      c.once("error", () => r(false));
    });
    if (ok) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill();
      throw new EdgeTrustError("UNAVAILABLE", `swtpm did not start: ${stderr.trim() || "no output"}`, { hint: "install swtpm (Debian: swtpm, swtpm-tools)" });
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    ctrlPort,
    env: { TPM2_PKCS11_TCTI: `swtpm:host=127.0.0.1,port=${port}`, TPM2_PKCS11_STORE: store, TPM2_PKCS11_LOG_LEVEL: "0" },
    stop: async () => {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await exited;
      }
    },
  };
}
