import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError, isEdgeTrustError, writeFileAtomic, type Logger } from "../common/index.js";
import { keyStoreCrypto, keyStoreCryptoKey, keyStorePublicCryptoKey, type KeyAlgorithm, type KeyStore } from "../hsm/index.js";
import type { Issued } from "./ca-client.js";
import { splitPems, type IdentityState } from "./state.js";

/** The labels of the first generation's device and Edge CA keys. */
export const BASE_LABELS = { device: "device-identity", edgeCa: "edge-ca" } as const;

/** In the state directory: the keys made for a rotation (or provisioning) not yet committed, label → ids. */
export const PENDING_KEYS_FILE = "keys.pending.json";

/**
 * In the state directory: keys replaced but kept on the token, label → ids — the hub server key, which the hub goes on
 * signing with until it reloads its certificate (its 5 s file poll or SIGHUP). Erased by id right before the next
 * rotation generates into their label (see `IdentityKeys.keepUntilReused`).
 */
export const KEPT_KEYS_FILE = "keys.kept.json";

/** How many times a key generation the token failed half-way is retried (see `IdentityKeys.fresh`). */
const GENERATE_ATTEMPTS = 3;

/** The other of the two labels a rotating key alternates between (`x` ↔ `x.1`). */
export function nextLabel(current: string): string {
  return current.endsWith(".1") ? current.slice(0, -2) : `${current}.1`;
}

export function pemOf(c: x509.X509Certificate): string {
  return c.toString("pem") + "\n";
}

/**
 * The identity's keys in the HSM and their rotation: a new key is made under the other label before the CA is asked,
 * the old one is erased only once the certificate for the new one is committed. Also the check that a certificate
 * from the CA carries the key that was asked for.
 */
export class IdentityKeys {
  readonly crypto = keyStoreCrypto();
  private readonly signingKeys = new Map<string, CryptoKey>();

  /** `pendingFile`: where the keys made for a rotation not yet committed are recorded (see `fresh`). */
  constructor(private readonly o: { keys: KeyStore; keyAlgorithm: KeyAlgorithm; log: Logger; pendingFile?: string; keptFile?: string }) {}

  async signingKey(label: string): Promise<CryptoKey> {
    let k = this.signingKeys.get(label);
    if (!k) {
      k = await keyStoreCryptoKey(this.o.keys, { label });
      this.signingKeys.set(label, k);
    }
    return k;
  }

  async publicKey(label: string): Promise<CryptoKey> {
    return keyStorePublicCryptoKey(this.o.keys, { label });
  }

  /** The public key (SPKI DER, hex) under a label. */
  async spki(label: string): Promise<string> {
    return Buffer.from((await this.o.keys.getPublicKey({ label })).spki).toString("hex");
  }

  /**
   * The key a rotation (or provisioning) switches to, under `label`. Which keys this daemon made for a rotation not
   * yet committed is written to `keys.pending.json` (label → ids) *before* the token is asked to make one, so after
   * any failure — the token gone mid-generation, SoftHSM failing half-way, a crash before the switch-over — the next
   * attempt knows what is its own and erases it, whole or in parts, by label *and* id, before making a new key. (Not
   * reused: the CA may already have certified it, under a profile that has since changed, and answer that again.)
   * Nothing else is ever erased here: not a key the committed state uses, not a key with an id this daemon did not
   * record (another component's, or an operator's), which is refused with the way out. The one exception holds no
   * key: a public half under the label whose private half is on the token no more.
   */
  async fresh(label: string, committed: IdentityState | undefined): Promise<void> {
    if (committed && Object.values(committed.keys).includes(label)) {
      throw new EdgeTrustError("INTERNAL", `refusing to replace key ${JSON.stringify(label)}: the committed identity uses it`);
    }
    this.signingKeys.delete(label);
    // A key kept after it was replaced (the hub server key of two rotations ago): its consumer has long reloaded.
    const kept = this.readIds(this.o.keptFile);
    for (const id of kept[label] ?? []) {
      if (this.o.keys.eraseObjects) await this.o.keys.eraseObjects({ label, id });
      else await this.erase(label, id);
      this.o.log.info({ label }, "erased the key kept since the rotation before last, to make the new one under its label");
    }
    if (kept[label]) {
      delete kept[label];
      this.writeIds(this.o.keptFile, kept);
    }
    const pending = this.readPending();
    const ours = pending[label] ?? [];
    for (const id of ours) await this.erase(label, id);
    // A public half whose private half is gone from the token (an erasure cut short by an earlier version, which
    // erased the private half first) is no one's usable key and holds nothing secret, but it blocks the label for ever.
    for (const id of (await this.o.keys.orphanPublicKeys?.(label)) ?? []) {
      if ((await this.o.keys.eraseObjects?.({ label, id })) ?? 0) this.o.log.warn({ label, id }, "erased a public key whose private half is gone (left by an interrupted erasure)");
    }
    const stranger = await this.objectsUnder(label);
    if (stranger) {
      throw new EdgeTrustError("HSM_KEY_EXISTS", `the token already has a key labelled ${JSON.stringify(label)} (id ${stranger}) that this daemon did not make for this rotation`, {
        hint: `if it is debris, erase it (edgetrust hsm delete "pkcs11:object=${label};id=%${stranger.match(/../g)?.join("%") ?? ""}") and the rotation goes on; if another component uses it, give that component another label`,
      });
    }
    for (let attempt = 1; ; attempt++) {
      const id = randomBytes(16).toString("hex");
      this.writePending({ ...pending, [label]: [id] });
      try {
        await this.o.keys.generateKey(label, this.o.keyAlgorithm, { id });
        return;
      } catch (e) {
        const ckr = isEdgeTrustError(e) ? (e.details as { ckr?: string } | undefined)?.ckr : undefined;
        // SoftHSM's file store fails a generation now and then when another thread or process touches the token
        // at the same moment (CKR_FUNCTION_FAILED / CKR_GENERAL_ERROR, SoftHSMv2 issue 573), or answers OK and then
        // does not find the private key it made (HSM_KEY_NOT_FOUND from the lookup by id; seen in a 40-round soak):
        // what it left is ours by id; erase it and try again, a bounded number of times.
        const transient = ckr === "CKR_FUNCTION_FAILED" || ckr === "CKR_GENERAL_ERROR" || isEdgeTrustError(e, "HSM_KEY_NOT_FOUND");
        if (attempt >= GENERATE_ATTEMPTS || !transient) throw e;
        this.o.log.warn({ label, attempt, ckr, err: (e as Error).message }, "the token failed to generate the key; erasing what it left and trying again");
        await this.erase(label, id);
        pending[label] = [];
      }
    }
  }

  /** The key under `label`, made if there is none (the hub's key is kept across provisionings). */
  async ensure(label: string): Promise<void> {
    try {
      await this.o.keys.getKey({ label });
    } catch (e) {
      if (!isEdgeTrustError(e, "HSM_KEY_NOT_FOUND")) throw e;
      await this.o.keys.generateKey(label, this.o.keyAlgorithm);
    }
  }

  /**
   * Erase keys the committed state no longer uses (only ever after the commit), and forget the pending record of
   * what it now uses. A retired key's id is recorded first: if its erasure is cut short, the next rotation to its
   * label erases the rest as its own.
   */
  async retire(labels: string[], state: IdentityState): Promise<void> {
    const inUse = new Set(Object.values(state.keys));
    const pending = this.readPending();
    for (const l of Object.keys(pending)) if (inUse.has(l)) delete pending[l];
    for (const label of labels) {
      if (inUse.has(label)) continue;
      try {
        const { id } = await this.o.keys.getKey({ label });
        pending[label] = [...(pending[label] ?? []).filter((x) => x !== id), id];
        this.writePending(pending);
        await this.o.keys.delete({ label });
        this.signingKeys.delete(label);
        pending[label] = (pending[label] ?? []).filter((x) => x !== id);
        this.o.log.info({ label }, "old key erased after its replacement was stored");
      } catch (e) {
        this.o.log.warn({ label, err: (e as Error).message }, "could not erase the old key");
      }
    }
    this.writePending(pending);
  }

  /**
   * Record the key under `label` (in use now, about to be replaced) to be kept on the token after the switch-over and
   * erased only when a later rotation makes a new key under this label (`fresh`) — a renewal period later, long after
   * its consumer reloaded. Written *before* the commit that replaces it, so no crash leaves it unrecorded (an
   * unrecorded key would block its label: `fresh` refuses keys it did not make); `fresh` never erases a label the
   * committed state uses, so recording it early erases nothing early.
   */
  async keepUntilReused(label: string): Promise<void> {
    const { id } = await this.o.keys.getKey({ label });
    const kept = this.readIds(this.o.keptFile);
    kept[label] = [...(kept[label] ?? []).filter((x) => x !== id), id];
    this.writeIds(this.o.keptFile, kept);
  }

  /** Forget kept-key records for labels the committed state uses again (provisioning took the kept key back). */
  forgetKept(state: IdentityState): void {
    const kept = this.readIds(this.o.keptFile);
    const inUse = new Set(Object.values(state.keys));
    const left = Object.fromEntries(Object.entries(kept).filter(([l]) => !inUse.has(l)));
    if (Object.keys(left).length !== Object.keys(kept).length) this.writeIds(this.o.keptFile, left);
  }

  private async erase(label: string, id: string): Promise<void> {
    if (!this.o.keys.eraseObjects) {
      // A store without partial objects (software files): a whole key or nothing.
      try {
        const k = await this.o.keys.getKey({ label, id });
        if (k.id === id) await this.o.keys.delete({ label, id });
      } catch (e) {
        if (!isEdgeTrustError(e, "HSM_KEY_NOT_FOUND")) throw e;
      }
      return;
    }
    const n = await this.o.keys.eraseObjects({ label, id });
    if (n > 0) this.o.log.warn({ label, id, objects: n }, "erased what an interrupted provisioning or renewal left of its new key");
  }

  /** The id of any private key still under `label` (the public halves a store keeps are erased with ours by id). */
  private async objectsUnder(label: string): Promise<string | undefined> {
    try {
      return (await this.o.keys.getKey({ label })).id;
    } catch (e) {
      if (isEdgeTrustError(e, "HSM_KEY_NOT_FOUND")) return undefined;
      if (isEdgeTrustError(e, "INVALID_INPUT")) return (await this.o.keys.list()).find((k) => k.label === label)?.id ?? "?";
      throw e;
    }
  }

  private readPending(): Record<string, string[]> {
    return this.readIds(this.o.pendingFile);
  }

  private readIds(file: string | undefined): Record<string, string[]> {
    if (!file || !existsSync(file)) return {};
    try {
      const v = JSON.parse(readFileSync(file, "utf8")) as unknown;
      if (!v || typeof v !== "object" || Array.isArray(v)) return {};
      const out: Record<string, string[]> = {};
      for (const [k, ids] of Object.entries(v as Record<string, unknown>)) {
        if (Array.isArray(ids)) out[k] = ids.filter((x): x is string => typeof x === "string" && /^([0-9a-f]{2})+$/.test(x));
      }
      return out;
    } catch {
      this.o.log.warn({ file }, "a record of the daemon's keys is unreadable; treating it as empty");
      return {};
    }
  }

  private writePending(p: Record<string, string[]>): void {
    this.writeIds(this.o.pendingFile, p);
  }

  private writeIds(file: string | undefined, p: Record<string, string[]>): void {
    if (!file) return;
    const kept = Object.fromEntries(Object.entries(p).filter(([, ids]) => ids.length > 0));
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    writeFileAtomic(file, JSON.stringify(kept, null, 2) + "\n");
  }

  async csr(label: string, commonName: string): Promise<string> {
    const keys = { privateKey: await this.signingKey(label), publicKey: await this.publicKey(label) };
    const alg = this.o.keyAlgorithm;
    const signingAlgorithm = alg.startsWith("EC") ? { name: "ECDSA", hash: alg === "EC-P384" ? "SHA-384" : "SHA-256" } : { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    const req = await x509.Pkcs10CertificateRequestGenerator.create({ name: new x509.Name([{ CN: [commonName] }]), keys, signingAlgorithm }, this.crypto);
    return req.toString("pem");
  }

  /** The certificate must carry the key we asked for and chain to the CA bundle. */
  async checkIssued(issued: Issued, label: string, bundle: string[]): Promise<{ cert: string; chain: string[] }> {
    const [leaf, ...chain] = splitPems(issued.chainPem.includes(issued.certificatePem.trim()) ? issued.chainPem : issued.certificatePem + issued.chainPem);
    if (!leaf) throw new EdgeTrustError("DEVICE_ENROLL_FAILED", "the CA returned no certificate");
    const cert = new x509.X509Certificate(leaf);
    if (Buffer.from(cert.publicKey.rawData).toString("hex") !== (await this.spki(label))) {
      throw new EdgeTrustError("DEVICE_ENROLL_FAILED", "the CA returned a certificate for another key");
    }
    const issuers = [...chain, ...bundle].map((p) => new x509.X509Certificate(p));
    const issuer = issuers.find((c) => c.subject === cert.issuer);
    if (!issuer || !(await cert.verify({ publicKey: issuer.publicKey, signatureOnly: true }))) {
      throw new EdgeTrustError("DEVICE_ENROLL_FAILED", `the certificate from the CA does not chain to its trust bundle (issuer ${cert.issuer})`);
    }
    return { cert: pemOf(cert), chain: chain.filter((p) => new x509.X509Certificate(p).subject !== new x509.X509Certificate(p).issuer) };
  }
}
