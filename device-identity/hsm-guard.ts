import { createHash, randomBytes } from "node:crypto";
import { EdgeTrustError, isEdgeTrustError, type Logger, backoffDelay } from "../common/index.js";
import { defaultScheme, openKeyStore, readPin, type HsmConfig, type KeyAlgorithm, type KeyInfo, type KeyRef, type KeyStore, type MacKeyStore, type PublicKeyExport, type SignatureScheme } from "../hsm/index.js";

/**
 * The daemon's view of its HSM: opening it (waiting while it is absent, never retrying a refused PIN), noticing when
 * it stops working mid-run, refusing key operations fast while it is down, and reopening it when it is back.
 *
 * SoftHSM2 (and many real tokens) do not see a token come back inside one C_Initialize: once its directory vanished,
 * every later lookup in that initialisation fails. Recovery therefore closes the store — the last user finalises the
 * module — and opens it again, which re-reads the token. Everything else holds `keys`, a KeyStore that forwards to the
 * store currently open, so signing keys built on it (keyStoreCryptoKey) survive the swap.
 */

/** The `hsm doctor` check a key-store error belongs to (the wording `edgetrust hsm doctor` uses). */
function doctorCheckOf(code: string): "module" | "token" | "pin" | "mechanisms" | "key" {
  if (code.startsWith("HSM_MODULE")) return "module";
  if (code === "HSM_TOKEN_NOT_FOUND") return "token";
  if (code.startsWith("HSM_PIN")) return "pin";
  if (code === "HSM_MECHANISM_UNSUPPORTED") return "mechanisms";
  return "key";
}

/** One line, as `edgetrust hsm doctor` words it: which check fails, why, and what to do. */
function doctorLine(e: unknown): string {
  if (isEdgeTrustError(e)) return `hsm doctor: ${doctorCheckOf(e.code)} check failed: ${e.message} (${e.code}); fix: ${e.hint ?? "run edgetrust hsm doctor"}`;
  return `hsm doctor: key check failed: ${e instanceof Error ? e.message : String(e)}`;
}

/** Errors that say the token cannot be used right now (as opposed to a bad request, e.g. a label that exists). */
function isHsmFault(e: unknown): e is EdgeTrustError {
  if (!(e instanceof EdgeTrustError)) return false;
  return ["HSM_MODULE_NOT_FOUND", "HSM_MODULE_LOAD_FAILED", "HSM_TOKEN_NOT_FOUND", "HSM_PIN_INCORRECT", "HSM_PIN_LOCKED", "HSM_PIN_MISSING", "HSM_KEY_NOT_FOUND", "HSM_OPERATION_FAILED"].includes(e.code);
}

interface HsmStatus {
  ok: boolean;
  /** The doctor line while the HSM is unusable. */
  problem?: string;
  code?: string;
  since?: string;
  nextAttemptAt?: string;
  /** How many times the HSM was lost and reopened during this run. */
  recoveries: number;
}

interface HsmGuardOptions {
  hsm: HsmConfig;
  log: Logger;
  /** First delay between attempts to (re)open the HSM; doubles up to maxRetryMs. */
  retryMs: number;
  maxRetryMs: number;
  /** A store opened by the caller (tests, embedding): never closed or reopened, only probed. */
  keys?: KeyStore;
  /** Stop waiting (SIGTERM while the HSM is absent at start). */
  signal?: AbortSignal;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> => new Promise((resolve) => {
  const t = setTimeout(done, ms);
  function done(): void {
    clearTimeout(t);
    signal?.removeEventListener("abort", done);
    resolve();
  }
  signal?.addEventListener("abort", done, { once: true });
});

export class HsmGuard {
  /** The store everyone uses: forwards to the one open now, refuses at once (UNAVAILABLE) while the HSM is down. */
  readonly keys: KeyStore;
  private inner: KeyStore;
  private down: { error: EdgeTrustError; line: string; since: Date; attempts: number; nextAt: number } | undefined;
  private probing: Promise<boolean> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private recoveries = 0;
  /** Hash of the PIN a token refused: that PIN is never tried again (tokens lock after a few wrong PINs). */
  private refusedPin: string | undefined;
  private readonly listeners = new Set<() => void>();
  /** The key a probe signs with (the Edge CA key once the identity is loaded). */
  probeKey: (() => { label: string; algorithm: KeyAlgorithm } | undefined) | undefined;

  private constructor(private readonly o: HsmGuardOptions, inner: KeyStore) {
    this.inner = inner;
    this.keys = new GuardedKeyStore(this);
  }

  /**
   * Open the HSM; while it cannot be opened (module missing or not loadable, token absent, PIN refused or missing),
   * say why in one doctor line — again only when the reason changes — and try again with backoff. A refused PIN is
   * not tried again until the PIN source gives another one.
   */
  static async open(o: HsmGuardOptions): Promise<HsmGuard> {
    if (o.keys) return new HsmGuard(o, o.keys);
    let last = "";
    let refused: string | undefined;
    for (let attempt = 1; ; attempt++) {
      if (o.signal?.aborted) throw new EdgeTrustError("UNAVAILABLE", "stopped while waiting for the HSM");
      const delay = backoffDelay(attempt - 1, { initialMs: o.retryMs, maxMs: o.maxRetryMs });
      let line: string;
      try {
        const pinTag = HsmGuard.pinTag(o.hsm);
        if (refused !== undefined && pinTag === refused) {
          await sleep(delay, o.signal);
          continue;
        }
        const keys = await openKeyStore(o.hsm, { logger: o.log });
        if (attempt > 1) o.log.info({ attempts: attempt }, "HSM available: starting");
        const g = new HsmGuard(o, keys);
        return g;
      } catch (e) {
        if (!isHsmFault(e)) throw e;
        line = doctorLine(e);
        if (e.code === "HSM_PIN_INCORRECT") refused = HsmGuard.pinTag(o.hsm);
        if (line !== last) {
          o.log.error({ code: e.code, check: doctorCheckOf(e.code), retryInSeconds: Math.round(delay / 1000), problem: line },
            e.code === "HSM_PIN_INCORRECT"
              ? "HSM unavailable at start: the token refused the PIN; waiting for another PIN in the PIN source (the same PIN is not tried again: tokens lock), nothing is served until the HSM opens"
              : "HSM unavailable at start: waiting for it, nothing is served until it opens");
          last = line;
        }
      }
      await sleep(delay, o.signal);
    }
  }

  private static pinTag(hsm: HsmConfig): string | undefined {
    if (hsm.backend !== "pkcs11") return undefined;
    try {
      return createHash("sha256").update(readPin({ pinFile: hsm.pinFile, pinEnv: hsm.pinEnv })).digest("hex");
    } catch {
      return undefined;
    }
  }

  status(): HsmStatus {
    if (!this.down) return { ok: true, recoveries: this.recoveries };
    return { ok: false, problem: this.down.line, code: this.down.error.code, since: this.down.since.toISOString(), nextAttemptAt: new Date(this.down.nextAt).toISOString(), recoveries: this.recoveries };
  }

  /** The doctor line while the HSM is down. */
  problem(): string | undefined {
    return this.down?.line;
  }

  /** Called each time the HSM works again after an outage. */
  onRecovered(l: () => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** The error key operations get while the HSM is down: 503 with the reason. */
  unavailable(what = "the HSM is unavailable"): EdgeTrustError {
    const d = this.down;
    return new EdgeTrustError("UNAVAILABLE", `${what}: ${d ? d.line : "unknown"}`, {
      hint: "the daemon retries by itself; check the token with edgetrust hsm doctor",
      ...(d ? { details: { hsmCode: d.error.code } } : {}),
    });
  }

  /** Run a key operation on the current store; a fault is checked with a probe and, if the HSM is down, becomes UNAVAILABLE. */
  async call<T>(fn: (s: KeyStore) => Promise<T>): Promise<T> {
    if (this.down) throw this.unavailable();
    try {
      return await fn(this.inner);
    } catch (e) {
      if (!isHsmFault(e) || this.closed) throw e;
      // A missing key may be an ordinary answer (a label that is free): only a failing probe means the HSM is down.
      if (await this.probe(e)) throw e;
      throw this.unavailable();
    }
  }

  /** Sign with the probe key; on failure mark the HSM down (first failure: `cause`) and start the recovery loop. */
  private probe(cause: EdgeTrustError): Promise<boolean> {
    this.probing ??= (async () => {
      const k = this.probeKey?.();
      let err: unknown = cause;
      try {
        if (k) {
          await this.inner.sign({ label: k.label }, defaultScheme(k.algorithm), randomBytes(32));
          return true;
        }
        // Before the identity is loaded there is no key to sign with: a token that answers a search is up.
        await this.inner.list();
        return true;
      } catch (e) {
        err = e;
      }
      this.markDown(isHsmFault(err) ? err : cause);
      return false;
    })().finally(() => { this.probing = undefined; });
    return this.probing;
  }

  private markDown(error: EdgeTrustError): void {
    if (this.down || this.closed) return;
    const delay = this.o.retryMs;
    this.down = { error, line: doctorLine(error), since: new Date(), attempts: 0, nextAt: Date.now() + delay };
    this.o.log.error({ code: error.code, check: doctorCheckOf(error.code), problem: this.down.line, retryInSeconds: Math.round(delay / 1000) },
      "HSM unavailable: module certificates answer 503, renewals wait; reopening it with backoff");
    this.schedule(delay);
  }

  private schedule(delay: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.recover(), delay);
    this.timer.unref();
  }

  /** One recovery attempt: reopen the store (so the module re-reads its tokens), then prove it signs. */
  private async recover(): Promise<void> {
    const d = this.down;
    if (!d || this.closed) return;
    d.attempts++;
    let err: unknown;
    try {
      if (!this.o.keys) {
        const tag = HsmGuard.pinTag(this.o.hsm);
        if (this.refusedPin !== undefined && tag === this.refusedPin) {
          throw new EdgeTrustError("HSM_PIN_INCORRECT", "the token refused this PIN before; waiting for another one in the PIN source", { hint: "put the right PIN in hsm.pinFile" });
        }
        await this.inner.close().catch(() => undefined);
        try {
          this.inner = await openKeyStore(this.o.hsm, { logger: this.o.log });
        } catch (e) {
          if (isEdgeTrustError(e, "HSM_PIN_INCORRECT")) this.refusedPin = tag;
          throw e;
        }
      }
      const k = this.probeKey?.();
      if (k) await this.inner.sign({ label: k.label }, defaultScheme(k.algorithm), randomBytes(32));
      else await this.inner.list();
    } catch (e) {
      err = e;
    }
    if (this.closed) return;
    if (err === undefined) {
      this.recoveries++;
      this.o.log.info({ downSeconds: Math.round((Date.now() - d.since.getTime()) / 1000), attempts: d.attempts }, "HSM available again: issuing and renewing");
      this.down = undefined;
      for (const l of this.listeners) l();
      return;
    }
    const delay = backoffDelay(d.attempts, { initialMs: this.o.retryMs, maxMs: this.o.maxRetryMs });
    d.nextAt = Date.now() + delay;
    const line = doctorLine(err);
    if (line !== d.line) {
      d.line = line;
      if (err instanceof EdgeTrustError) d.error = err;
      this.o.log.error({ problem: line, retryInSeconds: Math.round(delay / 1000) }, "HSM still unavailable");
    }
    this.schedule(delay);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.probing?.catch(() => undefined);
    if (!this.o.keys) await this.inner.close();
  }

  /** For GuardedKeyStore. */
  currentKind(): KeyStore["kind"] {
    return this.inner.kind;
  }

  /** The software store's PEM export (development TLS), when the current store has one. */
  exportPem(ref: KeyRef): Promise<string> {
    return this.call(async (s) => {
      const ex = (s as KeyStore & { exportPrivateKeyPem?: (r: KeyRef) => Promise<string> }).exportPrivateKeyPem;
      if (typeof ex !== "function") throw new EdgeTrustError("INTERNAL", "this key store cannot export a key");
      return ex.call(s, ref);
    });
  }
}

/** The KeyStore the daemon hands out: every operation goes through the guard to whichever store is open now. */
class GuardedKeyStore implements KeyStore {
  constructor(private readonly g: HsmGuard) {}

  /** The open store's HMAC keys, through the guard like every other key operation. */
  readonly mac: MacKeyStore = {
    generateMacKey: (label) => this.g.call((s) => requireMac(s).generateMacKey(label)),
    macSign: (label, data) => this.g.call((s) => requireMac(s).macSign(label, data)),
    deleteMacKey: (label) => this.g.call((s) => requireMac(s).deleteMacKey(label)),
    listMacKeys: () => this.g.call((s) => requireMac(s).listMacKeys()),
  };

  get kind(): KeyStore["kind"] {
    return this.g.currentKind();
  }

  generateKey(label: string, algorithm: KeyAlgorithm, opts?: { id?: string }): Promise<KeyInfo> {
    return this.g.call((s) => s.generateKey(label, algorithm, opts));
  }

  getKey(ref: KeyRef): Promise<KeyInfo> {
    return this.g.call((s) => s.getKey(ref));
  }

  getPublicKey(ref: KeyRef): Promise<PublicKeyExport> {
    return this.g.call((s) => s.getPublicKey(ref));
  }

  sign(ref: KeyRef, scheme: SignatureScheme, data: Uint8Array): Promise<Buffer> {
    return this.g.call((s) => s.sign(ref, scheme, data));
  }

  list(): Promise<KeyInfo[]> {
    return this.g.call((s) => s.list());
  }

  delete(ref: KeyRef): Promise<void> {
    return this.g.call((s) => s.delete(ref));
  }

  orphanPublicKeys(label: string): Promise<string[]> {
    return this.g.call(async (s) => (s.orphanPublicKeys ? s.orphanPublicKeys(label) : []));
  }

  eraseObjects(ref: { label: string; id: string }): Promise<number> {
    return this.g.call((s) => {
      if (!s.eraseObjects) throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", "this key store cannot erase key objects by label and id");
      return s.eraseObjects(ref);
    });
  }

  /** The guard owns the store's lifetime. */
  async close(): Promise<void> {
    /* HsmGuard.close */
  }

  exportPrivateKeyPem(ref: KeyRef): Promise<string> {
    return this.g.exportPem(ref);
  }
}

function requireMac(s: KeyStore): MacKeyStore {
  if (!s.mac) throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", "this key store keeps no HMAC keys", { hint: "SAS authentication needs a PKCS#11 token (or the development software store)" });
  return s.mac;
}
