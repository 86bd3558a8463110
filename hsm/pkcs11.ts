import { createHash, createHmac, randomBytes } from "node:crypto";
import pkcs11js from "pkcs11js";
import type { Attribute, Handle, Mechanism, Template, TokenInfo } from "pkcs11js";
import { EdgeTrustError, backoffDelay, createLogger, faultKeyStep, isEdgeTrustError, redactString, type ErrorCode, type Logger } from "../common/index.js";
import { acquireModule, findObjects, moduleRefCount, pkcs11ErrorName, releaseModule, type LoadedModule } from "./pkcs11-module.js";
import { formatPkcs11Uri } from "./pkcs11-uri.js";
import { Pkcs11MacKeys } from "./mac.js";
import {
  CURVES, curveFromEcParams, curveOf, decodeEcPoint, digestInfo, ecParamsDer, ecSpki, jwkFromSpki, nodeHashName, rsaBitsOf, rsaSpki,
  type CurveInfo,
} from "./public-key.js";
import type { HashAlgorithm, KeyAlgorithm, KeyInfo, KeyRef, KeyStore, PublicKeyExport, SignatureScheme } from "./types.js";

/**
 * KeyStore on a PKCS#11 token through pkcs11js: SoftHSM2, tpm2-pkcs11, a network or PCIe HSM.
 *
 * - The module is shared per process (pkcs11-module.ts): one C_Initialize, finalised with its last user.
 * - The token is found by label; the user logs in once; a pool of sessions lets concurrent callers sign in parallel
 *   (each operation holds one session from C_SignInit to the end of C_SignAsync, which runs on a libuv worker).
 * - Private keys are generated sensitive, non-extractable, token-resident and private.
 * - Hashing happens in the token when it offers the combined mechanism (CKM_ECDSA_SHA256, CKM_SHA256_RSA_PKCS...);
 *   otherwise Node hashes and the token signs the digest (CKM_ECDSA, CKM_RSA_PKCS with a DigestInfo, CKM_RSA_PKCS_PSS).
 */
export interface Pkcs11StoreOptions {
  module: string;
  tokenLabel: string;
  /** The user PIN (see pin.ts for where it comes from). Never logged. */
  pin: string;
  sessionPoolSize?: number;
  logger?: Logger;
}

const P = pkcs11js;

const HASH_MECH: Record<HashAlgorithm, number> = { "SHA-256": P.CKM_SHA256, "SHA-384": P.CKM_SHA384, "SHA-512": P.CKM_SHA512 };
const MGF: Record<HashAlgorithm, number> = { "SHA-256": P.CKG_MGF1_SHA256, "SHA-384": P.CKG_MGF1_SHA384, "SHA-512": P.CKG_MGF1_SHA512 };
const ECDSA_WITH: Record<HashAlgorithm, number> = { "SHA-256": P.CKM_ECDSA_SHA256, "SHA-384": P.CKM_ECDSA_SHA384, "SHA-512": P.CKM_ECDSA_SHA512 };
const RSA_PKCS_WITH: Record<HashAlgorithm, number> = { "SHA-256": P.CKM_SHA256_RSA_PKCS, "SHA-384": P.CKM_SHA384_RSA_PKCS, "SHA-512": P.CKM_SHA512_RSA_PKCS };
const RSA_PSS_WITH: Record<HashAlgorithm, number> = { "SHA-256": P.CKM_SHA256_RSA_PKCS_PSS, "SHA-384": P.CKM_SHA384_RSA_PKCS_PSS, "SHA-512": P.CKM_SHA512_RSA_PKCS_PSS };
const HASH_LEN: Record<HashAlgorithm, number> = { "SHA-256": 32, "SHA-384": 48, "SHA-512": 64 };

/** Token label as PKCS#11 stores it: 32 bytes, blank padded. pkcs11js reports NULs when a label was set unpadded. */
export function trimLabel(label: string): string {
  return label.replace(/[\s\0]+$/, "");
}

const ulong = (b: Buffer): number => (b.length >= 8 ? Number(b.readBigUInt64LE(0)) : b.length >= 4 ? b.readUInt32LE(0) : (b[0] ?? 0));
const bool = (b: Buffer | undefined): boolean => (b?.[0] ?? 0) !== 0;

/** Map a pkcs11js error to an EdgeTrustError with a stable code and a one-sentence hint. Never includes the PIN. */
export function mapPkcs11Error(e: unknown, what: string, pin?: string): EdgeTrustError {
  if (e instanceof EdgeTrustError) return e;
  const ckr = pkcs11ErrorName(e);
  const scrub = (s: string) => {
    let out = redactString(s);
    if (pin) out = out.split(pin).join("[redacted]");
    return out;
  };
  const detail = ckr ?? scrub(e instanceof Error ? e.message : String(e));
  const table: Record<string, [ErrorCode, string]> = {
    CKR_PIN_INCORRECT: ["HSM_PIN_INCORRECT", "check the PIN in hsm.pinFile / the PIN variable; repeated wrong PINs lock the token"],
    CKR_PIN_INVALID: ["HSM_PIN_INCORRECT", "the PIN has characters the token does not accept; check hsm.pinFile"],
    CKR_PIN_LEN_RANGE: ["HSM_PIN_INCORRECT", "the PIN is shorter or longer than the token allows; check hsm.pinFile"],
    CKR_PIN_LOCKED: ["HSM_PIN_LOCKED", "the token locked the user PIN after too many failures; the security officer must reset it (C_InitPIN)"],
    CKR_PIN_EXPIRED: ["HSM_PIN_LOCKED", "the user PIN has expired; set a new one with the token's tools"],
    CKR_USER_PIN_NOT_INITIALIZED: ["HSM_PIN_MISSING", "the token has no user PIN yet; initialise it with edgetrust hsm init"],
    CKR_MECHANISM_INVALID: ["HSM_MECHANISM_UNSUPPORTED", "this token does not offer the mechanism; pick another key type or signature scheme"],
    CKR_MECHANISM_PARAM_INVALID: ["HSM_MECHANISM_UNSUPPORTED", "the token rejected the mechanism parameters (e.g. PSS salt length); use the defaults"],
    CKR_KEY_TYPE_INCONSISTENT: ["HSM_MECHANISM_UNSUPPORTED", "the signature scheme does not fit the key type; use ECDSA for EC keys and RSA schemes for RSA keys"],
    CKR_KEY_FUNCTION_NOT_PERMITTED: ["HSM_MECHANISM_UNSUPPORTED", "the key is not allowed to sign (CKA_SIGN false); generate a signing key"],
    CKR_KEY_SIZE_RANGE: ["HSM_MECHANISM_UNSUPPORTED", "the token does not support this key size; pick another algorithm"],
    CKR_DOMAIN_PARAMS_INVALID: ["HSM_MECHANISM_UNSUPPORTED", "the token does not support this curve; pick another algorithm"],
    CKR_TOKEN_NOT_PRESENT: ["HSM_TOKEN_NOT_FOUND", "the token was removed; reconnect it and retry"],
    CKR_KEY_HANDLE_INVALID: ["HSM_KEY_NOT_FOUND", "the key was deleted while in use; look it up again"],
    CKR_OBJECT_HANDLE_INVALID: ["HSM_KEY_NOT_FOUND", "the key was deleted while in use; look it up again"],
    CKR_USER_NOT_LOGGED_IN: ["HSM_OPERATION_FAILED", "the token session lost its login; reopen the key store"],
    CKR_TOKEN_WRITE_PROTECTED: ["HSM_OPERATION_FAILED", "the token is read-only; use a writable token to generate or delete keys"],
    CKR_DEVICE_MEMORY: ["HSM_OPERATION_FAILED", "the token is full; delete unused keys"],
  };
  const [code, hint] = (ckr && table[ckr]) || (["HSM_OPERATION_FAILED", "see the PKCS#11 return code; run edgetrust hsm doctor"] as [ErrorCode, string]);
  return new EdgeTrustError(code, `${what} failed: ${detail}`, { hint, details: ckr ? { ckr } : undefined });
}

/** Attempts to open a SoftHSM token before a "not found" or a general error stands (see Pkcs11KeyStore.open). */
const SOFTHSM_OPEN_ATTEMPTS = 5;

/** In-process login bookkeeping: PKCS#11 login is per application and token, not per session. */
const processKey = randomBytes(32);
const logins = new Map<string, { pinTag: string; stores: number }>();
const pinTag = (pin: string) => createHmac("sha256", processKey).update(pin).digest("hex");

interface ResolvedKey {
  handle: Handle;
  label: string;
  id: Buffer;
  algorithm: KeyAlgorithm;
  curve: CurveInfo | undefined;
  modulusBytes: number;
  extractable: boolean;
  sensitive: boolean;
}

interface SignPlan {
  mechanism: Mechanism;
  input: Buffer;
  outLen: number;
}

/**
 * Object-store writes against everything else, per module and process. SoftHSM's file object store is not safe
 * for a write racing other threads of the same process: a C_FindObjects or C_SignInit on another libuv worker can
 * read the object file C_GenerateKeyPair is still writing, the half-written object is marked invalid and the
 * generation fails with CKR_FUNCTION_FAILED (SoftHSMv2 issue 573; Teleport serialises its HSM work for the same
 * reason). Signing and lookups share the token; generating and erasing keys have it alone. Writers go first once
 * they wait, so steady signing cannot starve a rotation.
 */
class TokenWriteLock {
  private readers = 0;
  private writing = false;
  private readonly queue: { write: boolean; go: () => void }[] = [];

  async run<T>(write: boolean, fn: () => Promise<T>): Promise<T> {
    await this.acquire(write);
    try {
      return await fn();
    } finally {
      if (write) this.writing = false;
      else this.readers--;
      this.pump();
    }
  }

  private acquire(write: boolean): Promise<void> {
    if (this.queue.length === 0 && !this.writing && (write ? this.readers === 0 : true)) {
      if (write) this.writing = true;
      else this.readers++;
      return Promise.resolve();
    }
    return new Promise((go) => this.queue.push({ write, go }));
  }

  private pump(): void {
    while (this.queue.length > 0 && !this.writing) {
      const next = this.queue[0] as { write: boolean; go: () => void };
      if (next.write) {
        if (this.readers > 0) return;
        this.queue.shift();
        this.writing = true;
        next.go();
        return;
      }
      this.queue.shift();
      this.readers++;
      next.go();
    }
  }
}

const writeLocks = new WeakMap<LoadedModule, TokenWriteLock>();
function writeLockOf(mod: LoadedModule): TokenWriteLock {
  let l = writeLocks.get(mod);
  if (!l) {
    l = new TokenWriteLock();
    writeLocks.set(mod, l);
  }
  return l;
}

class SessionPool {
  private readonly free: Handle[];
  private readonly waiters: ((s: Handle) => void)[] = [];
  private busy = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(readonly all: Handle[], private readonly lock: TokenWriteLock) {
    this.free = [...all];
  }

  /** Run `fn` with a session; `write`: it creates or destroys token objects (see TokenWriteLock). */
  use<T>(fn: (s: Handle) => Promise<T> | T, write = false): Promise<T> {
    return this.lock.run(write, () => this.useSession(fn));
  }

  private async useSession<T>(fn: (s: Handle) => Promise<T> | T): Promise<T> {
    const s = this.free.pop() ?? (await new Promise<Handle>((resolve) => this.waiters.push(resolve)));
    this.busy++;
    try {
      return await fn(s);
    } finally {
      this.busy--;
      const next = this.waiters.shift();
      if (next) next(s);
      else this.free.push(s);
      if (this.busy === 0 && this.waiters.length === 0) {
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const f of w) f();
      }
    }
  }

  idle(): Promise<void> {
    return this.busy === 0 && this.waiters.length === 0 ? Promise.resolve() : new Promise((r) => this.idleWaiters.push(r));
  }
}

export class Pkcs11KeyStore implements KeyStore {
  readonly kind = "pkcs11" as const;
  private closed = false;
  private readonly cache = new Map<string, ResolvedKey>();
  /** HMAC-SHA256 secret keys in the same token (SAS signing). */
  readonly mac = new Pkcs11MacKeys(this);

  private constructor(
    private readonly mod: LoadedModule,
    readonly slot: Handle,
    readonly tokenLabel: string,
    readonly tokenInfo: TokenInfo,
    /** Mechanisms the token offers (C_GetMechanismList). */
    readonly mechanisms: ReadonlySet<number>,
    private readonly pool: SessionPool,
    private readonly loginKey: string,
    private readonly log: Logger,
  ) {}

  /**
   * Open the token: load the module, find the token by label, log in, open the session pool.
   *
   * SoftHSM rewrites a token's token.object in place at every login (its flags). Another process reading it at that
   * moment fails: initialising the module, it leaves the token out of its slot list until it initialises again
   * (`ca serve --workers` starting its workers together missed its token this way: "tokens present: none"); logging
   * in, it gets CKR_GENERAL_ERROR. Either is tried again, a few times, after a short wait — a token not listed only
   * when no other user in this process holds the module (a failed open finalises it, so the next one re-reads the
   * token directory; otherwise its list would stay the same).
   */
  static async open(opts: Pkcs11StoreOptions): Promise<Pkcs11KeyStore> {
    const softhsm = /softhsm/i.test(opts.module);
    for (let attempt = 1; ; attempt++) {
      const rescans = moduleRefCount(opts.module) === 0;
      try {
        return await Pkcs11KeyStore.openOnce(opts);
      } catch (e) {
        const notListed = isEdgeTrustError(e) && e.code === "HSM_TOKEN_NOT_FOUND" && Array.isArray(e.details?.labels) && rescans;
        const unreadable = isEdgeTrustError(e) && e.details?.ckr === "CKR_GENERAL_ERROR";
        if (!(softhsm && (notListed || unreadable) && attempt < SOFTHSM_OPEN_ATTEMPTS)) throw e;
        (opts.logger ?? createLogger("hsm")).warn({ tokenLabel: opts.tokenLabel, attempt, err: e.message }, "SoftHSM token unreadable (another process may be rewriting its token file); trying again");
        // A rewrite of the token file takes milliseconds: 50, 100, 200, 400 ms (±50 %, so two processes part).
        await new Promise((r) => setTimeout(r, backoffDelay(attempt - 1, { initialMs: 50, maxMs: 50 * 2 ** SOFTHSM_OPEN_ATTEMPTS, jitter: 0.5 })));
      }
    }
  }

  private static async openOnce(opts: Pkcs11StoreOptions): Promise<Pkcs11KeyStore> {
    const log = opts.logger ?? createLogger("hsm");
    const poolSize = Math.max(1, Math.min(64, opts.sessionPoolSize ?? 4));
    const mod = acquireModule(opts.module);
    const p11 = mod.p11;
    const sessions: Handle[] = [];
    let loginKey = "";
    try {
      const { slot, info } = findToken(mod, opts.tokenLabel);
      if (info.flags & P.CKF_USER_PIN_LOCKED) {
        throw new EdgeTrustError("HSM_PIN_LOCKED", `the user PIN of token ${JSON.stringify(opts.tokenLabel)} is locked`, {
          hint: "the security officer must reset the user PIN (C_InitPIN, e.g. edgetrust hsm init --reset-pin) before the key store can open",
        });
      }
      if (!(info.flags & P.CKF_USER_PIN_INITIALIZED)) {
        throw new EdgeTrustError("HSM_PIN_MISSING", `token ${JSON.stringify(opts.tokenLabel)} has no user PIN yet`, {
          hint: "initialise the user PIN with edgetrust hsm init (or the token vendor's tool)",
        });
      }
      if (!opts.pin) {
        throw new EdgeTrustError("HSM_PIN_MISSING", "no HSM user PIN given", { hint: "set hsm.pinFile or the PIN environment variable" });
      }
      const mechanisms = new Set(p11.C_GetMechanismList(slot));
      for (let i = 0; i < poolSize; i++) {
        try {
          sessions.push(p11.C_OpenSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION));
        } catch (e) {
          // Tokens with a small session limit: run with what we got.
          if (sessions.length > 0 && pkcs11ErrorName(e) === "CKR_SESSION_COUNT") break;
          throw mapPkcs11Error(e, "opening a token session", opts.pin);
        }
      }
      loginKey = `${mod.path}#${slot.toString("hex")}`;
      const tag = pinTag(opts.pin);
      const existing = logins.get(loginKey);
      if (existing && existing.stores > 0) {
        if (existing.pinTag !== tag) {
          throw new EdgeTrustError("HSM_PIN_INCORRECT", `token ${JSON.stringify(opts.tokenLabel)} is already open in this process with a different PIN`, {
            hint: "use the same PIN source for every key store on one token",
          });
        }
        existing.stores++;
      } else {
        try {
          p11.C_Login(sessions[0] as Handle, P.CKU_USER, opts.pin);
        } catch (e) {
          // Another library in this process (e.g. the OpenSSL pkcs11 engine) may have logged in already.
          if (pkcs11ErrorName(e) !== "CKR_USER_ALREADY_LOGGED_IN") throw mapPkcs11Error(e, `logging in to token ${JSON.stringify(opts.tokenLabel)}`, opts.pin);
        }
        logins.set(loginKey, { pinTag: tag, stores: 1 });
      }
      log.info({ module: mod.path, tokenLabel: opts.tokenLabel, sessions: sessions.length }, "PKCS#11 token opened");
      return new Pkcs11KeyStore(mod, slot, opts.tokenLabel, info, mechanisms, new SessionPool(sessions, writeLockOf(mod)), loginKey, log);
    } catch (e) {
      for (const s of sessions) {
        try {
          p11.C_CloseSession(s);
        } catch {
          // best effort while failing
        }
      }
      releaseModule(mod);
      throw mapPkcs11Error(e, "opening the PKCS#11 token", opts.pin);
    }
  }

  /** The module is tpm2-pkcs11 (a TPM behind PKCS#11), which has a few quirks of its own. */
  get isTpm2Pkcs11(): boolean {
    try {
      const info = this.mod.p11.C_GetInfo();
      return /tpm2/i.test(`${info.manufacturerID} ${info.libraryDescription}`);
    } catch {
      return false;
    }
  }

  get modulePath(): string {
    return this.mod.path;
  }

  get sessionCount(): number {
    return this.pool.all.length;
  }

  /**
   * Run `fn` with a pooled, logged-in session (for the WebCrypto shim, HMAC keys, doctor and tests); `write` when it
   * creates or destroys token objects.
   */
  withSession<T>(fn: (p11: pkcs11js.PKCS11, session: Handle) => Promise<T> | T, opts: { write?: boolean } = {}): Promise<T> {
    this.assertOpen();
    return this.pool.use((s) => fn(this.mod.p11, s), opts.write ?? false);
  }

  /** The token-side handle of a key's private object. */
  async privateKeyHandle(ref: KeyRef): Promise<Handle> {
    return (await this.resolve(ref)).handle;
  }

  hasMechanism(m: number): boolean {
    return this.mechanisms.has(m);
  }

  uriFor(label: string, idHex: string): string {
    return formatPkcs11Uri({ token: this.tokenLabel, object: label, id: idHex, type: "private" });
  }

  async generateKey(label: string, algorithm: KeyAlgorithm, opts: { id?: string } = {}): Promise<KeyInfo> {
    this.assertOpen();
    if (!label || Buffer.byteLength(label) > 255) {
      throw new EdgeTrustError("INVALID_INPUT", "a key label must be 1 to 255 bytes", { hint: "give the key a short, unique label" });
    }
    let id: Buffer;
    if (opts.id !== undefined) {
      if (!/^([0-9a-fA-F]{2}){1,64}$/.test(opts.id)) {
        throw new EdgeTrustError("INVALID_INPUT", `key id ${JSON.stringify(opts.id)} is not 1 to 64 bytes of hex`, { hint: "give the id as hex, e.g. 01ab" });
      }
      id = Buffer.from(opts.id, "hex");
    } else id = randomBytes(16);
    const curve = curveOf(algorithm);
    const bits = rsaBitsOf(algorithm);
    if (!curve && !bits) {
      throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `unknown key algorithm ${JSON.stringify(algorithm)}`, {
        hint: "use one of EC-P256, EC-P384, RSA-2048, RSA-3072",
      });
    }
    const genMech = curve ? P.CKM_EC_KEY_PAIR_GEN : P.CKM_RSA_PKCS_KEY_PAIR_GEN;
    if (!this.mechanisms.has(genMech)) {
      throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `token ${JSON.stringify(this.tokenLabel)} cannot generate ${algorithm} keys`, {
        hint: curve ? "this token lacks CKM_EC_KEY_PAIR_GEN; use an RSA algorithm or another token" : "this token lacks CKM_RSA_PKCS_KEY_PAIR_GEN; use an EC algorithm or another token",
      });
    }

    const info = await this.pool.use(async (s) => {
      const p11 = this.mod.p11;
      const clash = [
        ...findAll(p11, s, [{ type: P.CKA_LABEL, value: label }]),
        ...findAll(p11, s, [{ type: P.CKA_ID, value: id }]),
      ];
      if (clash.length > 0) {
        throw new EdgeTrustError("HSM_KEY_EXISTS", `token ${JSON.stringify(this.tokenLabel)} already has an object labelled ${JSON.stringify(label)} or with id ${id.toString("hex")}`, {
          hint: "pick another label (or id), or delete the old key first with edgetrust hsm delete",
        });
      }
      const common = [
        { type: P.CKA_TOKEN, value: true },
        { type: P.CKA_LABEL, value: label },
        { type: P.CKA_ID, value: id },
      ];
      const pub: Template = [...common, { type: P.CKA_CLASS, value: P.CKO_PUBLIC_KEY }, { type: P.CKA_PRIVATE, value: false }, { type: P.CKA_VERIFY, value: true }];
      const priv: Template = [
        ...common,
        { type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY },
        { type: P.CKA_PRIVATE, value: true },
        { type: P.CKA_SENSITIVE, value: true },
        { type: P.CKA_EXTRACTABLE, value: false },
        { type: P.CKA_SIGN, value: true },
      ];
      // Least privilege: a signing key signs and nothing else — no decrypt, unwrap or derive on the private half, no
      // encrypt or wrap on the public half (SoftHSM's defaults allow all of them, for EC keys too). Some tokens
      // (tpm2-pkcs11: a TPM RSA key's sign and decrypt share one object attribute) refuse such templates; then the
      // key is made with the token's usage defaults, which is logged.
      const pubRestrict: Template = [{ type: P.CKA_ENCRYPT, value: false }, { type: P.CKA_WRAP, value: false }];
      const privRestrict: Template = [{ type: P.CKA_DECRYPT, value: false }, { type: P.CKA_UNWRAP, value: false }, { type: P.CKA_DERIVE, value: false }];
      if (curve) {
        pub.push({ type: P.CKA_KEY_TYPE, value: P.CKK_EC }, { type: P.CKA_EC_PARAMS, value: ecParamsDer(curve) });
        priv.push({ type: P.CKA_KEY_TYPE, value: P.CKK_EC });
      } else {
        pub.push(
          { type: P.CKA_KEY_TYPE, value: P.CKK_RSA },
          { type: P.CKA_MODULUS_BITS, value: bits },
          { type: P.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
        );
        priv.push({ type: P.CKA_KEY_TYPE, value: P.CKK_RSA });
      }
      try {
        // tpm2-pkcs11 gives every TPM RSA key encrypt/decrypt and fails a template that says otherwise (after it has
        // already created the object, so a retry would leak a TPM object slot): do not ask it.
        // For EC keys it refuses decrypt/unwrap false as well (a TPM ECC signing key cannot decrypt anyway): only
        // derive false is asked there.
        const tpm = this.isTpm2Pkcs11;
        const privT = tpm ? (curve ? [...priv, { type: P.CKA_DERIVE, value: false }] : priv) : [...priv, ...privRestrict];
        await p11.C_GenerateKeyPairAsync(s, { mechanism: genMech }, tpm ? pub : [...pub, ...pubRestrict], privT);
        faultKeyStep("generated", label);
      } catch (e) {
        const ckr = pkcs11ErrorName(e);
        const templateTrouble = ["CKR_GENERAL_ERROR", "CKR_ATTRIBUTE_VALUE_INVALID", "CKR_ATTRIBUTE_TYPE_INVALID", "CKR_TEMPLATE_INCONSISTENT"];
        if (!ckr || !templateTrouble.includes(ckr)) throw mapPkcs11Error(e, `generating ${algorithm} key ${JSON.stringify(label)}`);
        this.log.info({ tokenLabel: this.tokenLabel, label, ckr }, "token refused the usage restrictions (no decrypt/derive); generating with its defaults");
        try {
          await p11.C_GenerateKeyPairAsync(s, { mechanism: genMech }, pub, priv);
        } catch (e2) {
          throw mapPkcs11Error(e2, `generating ${algorithm} key ${JSON.stringify(label)}`);
        }
      }
      const handle = onlyOne(findAll(p11, s, [{ type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY }, { type: P.CKA_ID, value: id }]), label, this.tokenLabel);
      return this.describe(s, handle);
    }, true);
    this.cache.clear();
    this.log.info({ tokenLabel: this.tokenLabel, label, id: id.toString("hex"), algorithm }, "key generated");
    return this.toInfo(info);
  }

  async getKey(ref: KeyRef): Promise<KeyInfo> {
    return this.toInfo(await this.resolve(ref));
  }

  async getPublicKey(ref: KeyRef): Promise<PublicKeyExport> {
    try {
      return await this.readPublicKey(ref);
    } catch (e) {
      // Another process (the identity daemon's rekey) may have erased the key this store resolved and made a new
      // one under the same label: the remembered id then names nothing. Look the label up again, once.
      const stale = (isEdgeTrustError(e) && e.code === "HSM_KEY_NOT_FOUND") || ["CKR_KEY_HANDLE_INVALID", "CKR_OBJECT_HANDLE_INVALID"].includes(pkcs11ErrorName(e) ?? "");
      if (!stale) throw e;
      this.cache.clear();
      return await this.readPublicKey(ref);
    }
  }

  private async readPublicKey(ref: KeyRef): Promise<PublicKeyExport> {
    const key = await this.resolve(ref);
    const spki = await this.pool.use((s) => {
      const p11 = this.mod.p11;
      const pubs = findAll(p11, s, [{ type: P.CKA_CLASS, value: P.CKO_PUBLIC_KEY }, ...(key.id.length ? [{ type: P.CKA_ID, value: key.id }] : [{ type: P.CKA_LABEL, value: key.label }])]);
      const pubHandle = pubs[0];
      if (key.curve) {
        if (!pubHandle) {
          throw new EdgeTrustError("HSM_KEY_NOT_FOUND", `the public half of EC key ${JSON.stringify(key.label)} is not on the token`, {
            hint: "an EC public key cannot be derived from a non-extractable private key; regenerate the key pair",
          });
        }
        const [point] = getAttrs(p11, s, pubHandle, [P.CKA_EC_POINT]);
        return ecSpki(key.curve, decodeEcPoint(point ?? Buffer.alloc(0), key.curve.fieldBytes));
      }
      // RSA: the modulus and exponent are public attributes, on the public object or (if it is missing) the private one.
      const [n, e] = getAttrs(p11, s, pubHandle ?? key.handle, [P.CKA_MODULUS, P.CKA_PUBLIC_EXPONENT]);
      return rsaSpki(n ?? Buffer.alloc(0), e ?? Buffer.alloc(0));
    });
    return { spki, jwk: jwkFromSpki(spki), algorithm: key.algorithm };
  }

  async sign(ref: KeyRef, scheme: SignatureScheme, data: Uint8Array): Promise<Buffer> {
    this.assertOpen();
    const input = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (let attempt = 0; ; attempt++) {
      const key = await this.resolve(ref);
      const plan = this.planSign(key, scheme, input);
      try {
        return await this.pool.use(async (s) => {
          const p11 = this.mod.p11;
          p11.C_SignInit(s, plan.mechanism, key.handle);
          return await p11.C_SignAsync(s, plan.input, Buffer.alloc(plan.outLen));
        });
      } catch (e) {
        const ckr = pkcs11ErrorName(e);
        if (attempt === 0 && (ckr === "CKR_KEY_HANDLE_INVALID" || ckr === "CKR_OBJECT_HANDLE_INVALID")) {
          this.cache.clear();
          continue;
        }
        throw mapPkcs11Error(e, `signing with key ${JSON.stringify(key.label)}`);
      }
    }
  }

  async list(): Promise<KeyInfo[]> {
    this.assertOpen();
    const keys = await this.pool.use((s) => {
      const out: ResolvedKey[] = [];
      for (const h of findAll(this.mod.p11, s, [{ type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY }])) {
        try {
          out.push(this.describe(s, h));
        } catch (e) {
          if (!(e instanceof EdgeTrustError && e.code === "HSM_MECHANISM_UNSUPPORTED")) throw e;
          this.log.debug({ tokenLabel: this.tokenLabel }, "skipping a private key of a type edgetrust does not use");
        }
      }
      return out;
    });
    return keys.map((k) => this.toInfo(k)).sort((a, b) => a.label.localeCompare(b.label) || a.id.localeCompare(b.id));
  }

  async delete(ref: KeyRef): Promise<void> {
    const key = await this.resolve(ref);
    await this.pool.use((s) => {
      const p11 = this.mod.p11;
      const match = key.id.length ? [{ type: P.CKA_ID, value: key.id }] : [{ type: P.CKA_LABEL, value: key.label }];
      const pubs = findAll(p11, s, [{ type: P.CKA_CLASS, value: P.CKO_PUBLIC_KEY }, ...match]);
      // The public half goes first: a deletion cut short then leaves the private key, which a lookup by label still
      // finds (and a retry erases), instead of a public object that no lookup finds but that blocks the label.
      try {
        for (const h of pubs) p11.C_DestroyObject(s, h);
        if (pubs.length > 0) faultKeyStep("delete:half-destroyed", key.label);
        p11.C_DestroyObject(s, key.handle);
      } catch (e) {
        throw mapPkcs11Error(e, `deleting key ${JSON.stringify(key.label)}`);
      } finally {
        this.cache.clear();
      }
    }, true);
    this.cache.clear();
    this.log.info({ tokenLabel: this.tokenLabel, label: key.label, id: key.id.toString("hex") }, "key deleted");
  }

  async eraseObjects(ref: { label: string; id: string }): Promise<number> {
    this.assertOpen();
    if (!ref.label || !/^([0-9a-fA-F]{2})+$/.test(ref.id)) {
      throw new EdgeTrustError("INVALID_INPUT", "erasing key objects needs both a label and a hex id", { hint: "name the objects by label and id" });
    }
    const n = await this.pool.use((s) => {
      const p11 = this.mod.p11;
      const objs = findAll(p11, s, [{ type: P.CKA_LABEL, value: ref.label }, { type: P.CKA_ID, value: Buffer.from(ref.id, "hex") }]);
      try {
        for (const h of objs) p11.C_DestroyObject(s, h);
      } catch (e) {
        throw mapPkcs11Error(e, `erasing the objects of key ${JSON.stringify(ref.label)} (id ${ref.id})`);
      } finally {
        this.cache.clear();
      }
      return objs.length;
    }, true);
    if (n > 0) this.log.info({ tokenLabel: this.tokenLabel, label: ref.label, id: ref.id.toLowerCase(), objects: n }, "key objects erased");
    return n;
  }

  async orphanPublicKeys(label: string): Promise<string[]> {
    this.assertOpen();
    return this.pool.use((s) => {
      const p11 = this.mod.p11;
      const out: string[] = [];
      for (const h of findAll(p11, s, [{ type: P.CKA_CLASS, value: P.CKO_PUBLIC_KEY }, { type: P.CKA_LABEL, value: label }])) {
        const [id] = getAttrs(p11, s, h, [P.CKA_ID]);
        if (!id?.length) continue;
        if (findAll(p11, s, [{ type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY }, { type: P.CKA_ID, value: id }]).length === 0) out.push(id.toString("hex"));
      }
      return out;
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.idle();
    for (const s of this.pool.all) {
      try {
        this.mod.p11.C_CloseSession(s);
      } catch {
        // the session is gone either way
      }
    }
    const login = logins.get(this.loginKey);
    if (login) {
      login.stores--;
      if (login.stores <= 0) logins.delete(this.loginKey);
    }
    this.cache.clear();
    releaseModule(this.mod);
    this.log.debug({ tokenLabel: this.tokenLabel }, "PKCS#11 token closed");
  }

  // ---- internals ----

  private assertOpen(): void {
    if (this.closed) throw new EdgeTrustError("HSM_OPERATION_FAILED", "the key store is closed", { hint: "open a new key store" });
  }

  private async resolve(ref: KeyRef): Promise<ResolvedKey> {
    this.assertOpen();
    if (!ref.label && !ref.id) {
      throw new EdgeTrustError("INVALID_INPUT", "a key must be named by label or id", { hint: "pass a label, id:<hex> or a pkcs11: URI" });
    }
    if (ref.id !== undefined && !/^([0-9a-fA-F]{2})+$/.test(ref.id)) {
      throw new EdgeTrustError("INVALID_INPUT", `key id ${JSON.stringify(ref.id)} is not hex`, { hint: "give the id as hex, e.g. 01ab" });
    }
    const cacheKey = `${ref.label ?? ""}\u0000${(ref.id ?? "").toLowerCase()}`;
    const hit = this.cache.get(cacheKey);
    if (hit) return hit;
    const key = await this.pool.use((s) => {
      const tmpl: Template = [{ type: P.CKA_CLASS, value: P.CKO_PRIVATE_KEY }];
      if (ref.label) tmpl.push({ type: P.CKA_LABEL, value: ref.label });
      if (ref.id) tmpl.push({ type: P.CKA_ID, value: Buffer.from(ref.id, "hex") });
      const name = ref.label ? JSON.stringify(ref.label) + (ref.id ? ` (id ${ref.id})` : "") : `with id ${ref.id}`;
      return this.describe(s, onlyOne(findAll(this.mod.p11, s, tmpl), name, this.tokenLabel));
    });
    this.cache.set(cacheKey, key);
    return key;
  }

  private describe(s: Handle, h: Handle): ResolvedKey {
    const p11 = this.mod.p11;
    const [label, id, keyType, extractable, sensitive] = getAttrs(p11, s, h, [P.CKA_LABEL, P.CKA_ID, P.CKA_KEY_TYPE, P.CKA_EXTRACTABLE, P.CKA_SENSITIVE]);
    const base = {
      handle: h,
      label: (label ?? Buffer.alloc(0)).toString("utf8"),
      id: id ?? Buffer.alloc(0),
      extractable: bool(extractable),
      sensitive: bool(sensitive),
    };
    const kt = keyType ? ulong(keyType) : -1;
    if (kt === P.CKK_EC) {
      const [params] = getAttrs(p11, s, h, [P.CKA_EC_PARAMS]);
      const curve = params ? curveFromEcParams(params) : undefined;
      if (curve) return { ...base, algorithm: curve.algorithm, curve, modulusBytes: 0 };
    } else if (kt === P.CKK_RSA) {
      const [n] = getAttrs(p11, s, h, [P.CKA_MODULUS]);
      const bytes = n ? n.length - (n[0] === 0 ? 1 : 0) : 0;
      if (bytes === 256) return { ...base, algorithm: "RSA-2048", curve: undefined, modulusBytes: 256 };
      if (bytes === 384) return { ...base, algorithm: "RSA-3072", curve: undefined, modulusBytes: 384 };
    }
    throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `key ${JSON.stringify(base.label)} is of a type edgetrust does not use`, {
      hint: `edgetrust uses ${CURVES.map((c) => c.algorithm).join(", ")}, RSA-2048 and RSA-3072 keys`,
    });
  }

  private toInfo(k: ResolvedKey): KeyInfo {
    const id = k.id.toString("hex");
    return { label: k.label, id, algorithm: k.algorithm, uri: this.uriFor(k.label, id), extractable: k.extractable, sensitive: k.sensitive };
  }

  private planSign(key: ResolvedKey, scheme: SignatureScheme, data: Buffer): SignPlan {
    const unsupported = (why: string, hint: string) => new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", why, { hint });
    const hash = scheme.hash;
    if (!(hash in HASH_LEN)) {
      throw unsupported(`hash ${JSON.stringify(hash)} is not supported`, "use SHA-256, SHA-384 or SHA-512");
    }
    const digest = () => createHash(nodeHashName(hash)).update(data).digest();
    const has = (m: number) => this.mechanisms.has(m);
    switch (scheme.name) {
      case "ECDSA": {
        if (!key.curve) throw unsupported(`${key.algorithm} key ${JSON.stringify(key.label)} cannot sign with ECDSA`, "use RSASSA-PKCS1-v1_5 or RSA-PSS for RSA keys");
        const outLen = 2 * key.curve.fieldBytes;
        if (has(ECDSA_WITH[hash])) return { mechanism: { mechanism: ECDSA_WITH[hash] }, input: data, outLen };
        if (has(P.CKM_ECDSA)) return { mechanism: { mechanism: P.CKM_ECDSA }, input: digest(), outLen };
        throw unsupported(`token ${JSON.stringify(this.tokenLabel)} offers no ECDSA mechanism`, "use a token that supports CKM_ECDSA, or an RSA key");
      }
      case "RSASSA-PKCS1-v1_5": {
        if (key.curve) throw unsupported(`${key.algorithm} key ${JSON.stringify(key.label)} cannot sign with RSASSA-PKCS1-v1_5`, "use ECDSA for EC keys");
        if (has(RSA_PKCS_WITH[hash])) return { mechanism: { mechanism: RSA_PKCS_WITH[hash] }, input: data, outLen: key.modulusBytes };
        if (has(P.CKM_RSA_PKCS)) return { mechanism: { mechanism: P.CKM_RSA_PKCS }, input: digestInfo(hash, digest()), outLen: key.modulusBytes };
        throw unsupported(`token ${JSON.stringify(this.tokenLabel)} offers no RSA PKCS#1 v1.5 mechanism`, "use RSA-PSS or an EC key");
      }
      case "RSA-PSS": {
        if (key.curve) throw unsupported(`${key.algorithm} key ${JSON.stringify(key.label)} cannot sign with RSA-PSS`, "use ECDSA for EC keys");
        const maxSalt = key.modulusBytes - HASH_LEN[hash] - 2;
        if (!Number.isInteger(scheme.saltLength) || scheme.saltLength < 0 || scheme.saltLength > maxSalt) {
          throw new EdgeTrustError("INVALID_INPUT", `PSS salt length ${scheme.saltLength} is outside 0..${maxSalt}`, { hint: "use the hash length as the salt length" });
        }
        const parameter = { type: P.CK_PARAMS_RSA_PSS, hashAlg: HASH_MECH[hash], mgf: MGF[hash], saltLen: scheme.saltLength };
        if (has(RSA_PSS_WITH[hash])) return { mechanism: { mechanism: RSA_PSS_WITH[hash], parameter }, input: data, outLen: key.modulusBytes };
        if (has(P.CKM_RSA_PKCS_PSS)) return { mechanism: { mechanism: P.CKM_RSA_PKCS_PSS, parameter }, input: digest(), outLen: key.modulusBytes };
        throw unsupported(`token ${JSON.stringify(this.tokenLabel)} offers no RSA-PSS mechanism`, "use RSASSA-PKCS1-v1_5 or an EC key");
      }
      default: {
        const name = (scheme as { name: unknown }).name;
        throw unsupported(`signature scheme ${JSON.stringify(name)} is not supported`, "use ECDSA, RSASSA-PKCS1-v1_5 or RSA-PSS");
      }
    }
  }
}

// ---- token and object helpers ----

interface TokenSlot {
  slot: Handle;
  info: TokenInfo;
  label: string;
}

/** Every initialised token the module reports. */
export function listTokens(mod: LoadedModule): TokenSlot[] {
  const out: TokenSlot[] = [];
  let slots: Handle[];
  try {
    slots = mod.p11.C_GetSlotList(true);
  } catch (e) {
    throw mapPkcs11Error(e, "listing the module's slots");
  }
  for (const slot of slots) {
    try {
      const info = mod.p11.C_GetTokenInfo(slot);
      if (info.flags & P.CKF_TOKEN_INITIALIZED) out.push({ slot, info, label: trimLabel(info.label) });
    } catch {
      // a slot whose token went away between the two calls
    }
  }
  return out;
}

export function findToken(mod: LoadedModule, label: string): TokenSlot {
  const tokens = listTokens(mod);
  const found = tokens.filter((t) => t.label === label);
  if (found.length === 0) {
    const have = tokens.map((t) => JSON.stringify(t.label)).join(", ");
    throw new EdgeTrustError("HSM_TOKEN_NOT_FOUND", `no token labelled ${JSON.stringify(label)} in ${mod.path}; tokens present: ${have || "none"}`, {
      hint: tokens.length ? "set hsm.tokenLabel (or --token) to one of the labels present" : "initialise a token with edgetrust hsm init --token <label>",
      details: { labels: tokens.map((t) => t.label) },
    });
  }
  if (found.length > 1) {
    throw new EdgeTrustError("HSM_TOKEN_NOT_FOUND", `${found.length} tokens are labelled ${JSON.stringify(label)}`, {
      hint: "give every token a unique label so the key store opens the right one",
    });
  }
  return found[0] as TokenSlot;
}

function findAll(p11: pkcs11js.PKCS11, s: Handle, tmpl: Template): Handle[] {
  try {
    return findObjects(p11, s, tmpl);
  } catch (e) {
    throw mapPkcs11Error(e, "searching the token");
  }
}

function onlyOne(handles: Handle[], name: string, token: string): Handle {
  if (handles.length === 0) {
    throw new EdgeTrustError("HSM_KEY_NOT_FOUND", `no private key ${name.startsWith('"') ? "labelled " : ""}${name} on token ${JSON.stringify(token)}`, {
      hint: "list the keys with edgetrust hsm list, or create it with edgetrust hsm keygen",
    });
  }
  if (handles.length > 1) {
    throw new EdgeTrustError("INVALID_INPUT", `${handles.length} private keys match ${name} on token ${JSON.stringify(token)}`, {
      hint: "name the key by its id (id:<hex> or a pkcs11: URI with id=) to pick one",
    });
  }
  return handles[0] as Handle;
}

function getAttrs(p11: pkcs11js.PKCS11, s: Handle, h: Handle, types: number[]): (Buffer | undefined)[] {
  try {
    const res = p11.C_GetAttributeValue(s, h, types.map((type): Attribute => ({ type })));
    return types.map((t) => {
      const v = res.find((a) => a.type === t)?.value;
      return Buffer.isBuffer(v) ? v : undefined;
    });
  } catch (e) {
    throw mapPkcs11Error(e, "reading key attributes");
  }
}
