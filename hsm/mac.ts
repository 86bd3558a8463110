import { createCipheriv, createDecipheriv, createHmac, randomBytes, scryptSync } from "node:crypto";
import { existsSync, readdirSync, readFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import pkcs11js from "pkcs11js";
import type { Handle, Template } from "pkcs11js";
import { EdgeTrustError, writeFileAtomic } from "../common/index.js";
import { findObjects, pkcs11ErrorName } from "./pkcs11-module.js";

/**
 * HMAC-SHA256 secret keys that never leave the key store: the per-module keys behind IoT Hub SAS tokens. A key is
 * generated inside the token (CKK_GENERIC_SECRET, 32 bytes, CKM_GENERIC_SECRET_KEY_GEN), sensitive, never
 * extractable, and may only sign (no verify, encrypt, wrap or derive): a token is checked by signing again and
 * comparing in constant time, so the one permitted operation is the one SAS needs.
 */
export interface MacKeyStore {
  generateMacKey(label: string): Promise<void>;
  /** HMAC-SHA256 of `data` with the secret key `label`. */
  macSign(label: string, data: Uint8Array): Promise<Buffer>;
  /** False when there was no such key. */
  deleteMacKey(label: string): Promise<boolean>;
  listMacKeys(): Promise<string[]>;
}

const P = pkcs11js;
const MAC_KEY_BYTES = 32;
const MAC_LABEL = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function checkMacLabel(label: string): void {
  if (!MAC_LABEL.test(label)) throw new EdgeTrustError("INVALID_INPUT", `MAC key label ${JSON.stringify(label)} is not allowed`, { hint: "letters, digits, '.', '_' or '-'" });
}

function notFound(label: string): EdgeTrustError {
  return new EdgeTrustError("HSM_KEY_NOT_FOUND", `no MAC key ${JSON.stringify(label)} in the key store`, { hint: "the key is made when its module is registered with auth: sas" });
}

/** What the PKCS#11 side needs from the store that owns the sessions (Pkcs11KeyStore). */
interface Pkcs11SessionSource {
  readonly tokenLabel: string;
  hasMechanism(m: number): boolean;
  withSession<T>(fn: (p11: pkcs11js.PKCS11, session: Handle) => Promise<T> | T, opts?: { write?: boolean }): Promise<T>;
}

const secretTemplate = (label: string): Template => [
  { type: P.CKA_CLASS, value: P.CKO_SECRET_KEY },
  { type: P.CKA_LABEL, value: label },
];

/** HMAC keys on a PKCS#11 token (SoftHSM2, an HSM). Object handles are remembered per label. */
export class Pkcs11MacKeys implements MacKeyStore {
  private readonly handles = new Map<string, Handle>();

  constructor(private readonly src: Pkcs11SessionSource) {}

  private fail(e: unknown, what: string): EdgeTrustError {
    if (e instanceof EdgeTrustError) return e;
    const ckr = pkcs11ErrorName(e) ?? (e as Error).message;
    return new EdgeTrustError("HSM_OPERATION_FAILED", `${what} failed: ${ckr}`, { hint: "run edgetrust hsm doctor", details: { ckr } });
  }

  async generateMacKey(label: string): Promise<void> {
    checkMacLabel(label);
    for (const m of [P.CKM_GENERIC_SECRET_KEY_GEN, P.CKM_SHA256_HMAC]) {
      if (!this.src.hasMechanism(m)) {
        throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `token ${JSON.stringify(this.src.tokenLabel)} lacks ${m === P.CKM_SHA256_HMAC ? "CKM_SHA256_HMAC" : "CKM_GENERIC_SECRET_KEY_GEN"}`, {
          hint: "SAS authentication needs HMAC-SHA256 keys generated in the token",
        });
      }
    }
    await this.src.withSession(async (p11, s) => {
      if (findObjects(p11, s, secretTemplate(label)).length > 0) throw new EdgeTrustError("HSM_KEY_EXISTS", `a MAC key labelled ${JSON.stringify(label)} exists already`);
      const tmpl: Template = [
        ...secretTemplate(label),
        { type: P.CKA_KEY_TYPE, value: P.CKK_GENERIC_SECRET },
        { type: P.CKA_TOKEN, value: true },
        { type: P.CKA_PRIVATE, value: true },
        { type: P.CKA_SENSITIVE, value: true },
        { type: P.CKA_EXTRACTABLE, value: false },
        { type: P.CKA_VALUE_LEN, value: MAC_KEY_BYTES },
        { type: P.CKA_SIGN, value: true },
        { type: P.CKA_VERIFY, value: false },
        { type: P.CKA_ENCRYPT, value: false },
        { type: P.CKA_DECRYPT, value: false },
        { type: P.CKA_WRAP, value: false },
        { type: P.CKA_UNWRAP, value: false },
        { type: P.CKA_DERIVE, value: false },
      ];
      try {
        this.handles.set(label, await p11.C_GenerateKeyAsync(s, { mechanism: P.CKM_GENERIC_SECRET_KEY_GEN }, tmpl));
      } catch (e) {
        throw this.fail(e, `generating MAC key ${JSON.stringify(label)}`);
      }
    }, { write: true });
  }

  private handle(p11: pkcs11js.PKCS11, s: Handle, label: string): Handle {
    let h = this.handles.get(label);
    if (!h) {
      const found = findObjects(p11, s, secretTemplate(label));
      if (found.length !== 1) throw found.length === 0 ? notFound(label) : new EdgeTrustError("HSM_OPERATION_FAILED", `${found.length} MAC keys are labelled ${JSON.stringify(label)}`);
      h = found[0] as Handle;
      this.handles.set(label, h);
    }
    return h;
  }

  async macSign(label: string, data: Uint8Array): Promise<Buffer> {
    checkMacLabel(label);
    const input = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.src.withSession(async (p11, s) => {
          p11.C_SignInit(s, { mechanism: P.CKM_SHA256_HMAC }, this.handle(p11, s, label));
          return await p11.C_SignAsync(s, input, Buffer.alloc(32));
        });
      } catch (e) {
        const ckr = pkcs11ErrorName(e);
        if (attempt === 0 && (ckr === "CKR_KEY_HANDLE_INVALID" || ckr === "CKR_OBJECT_HANDLE_INVALID")) {
          this.handles.delete(label);
          continue;
        }
        throw this.fail(e, `HMAC with key ${JSON.stringify(label)}`);
      }
    }
  }

  async deleteMacKey(label: string): Promise<boolean> {
    checkMacLabel(label);
    this.handles.delete(label);
    return this.src.withSession((p11, s) => {
      const found = findObjects(p11, s, secretTemplate(label));
      try {
        for (const h of found) p11.C_DestroyObject(s, h);
      } catch (e) {
        throw this.fail(e, `deleting MAC key ${JSON.stringify(label)}`);
      }
      return found.length > 0;
    }, { write: true });
  }

  async listMacKeys(): Promise<string[]> {
    return this.src.withSession((p11, s) => {
      const out: string[] = [];
      for (const h of findObjects(p11, s, [{ type: P.CKA_CLASS, value: P.CKO_SECRET_KEY }])) {
        const [attr] = p11.C_GetAttributeValue(s, h, [{ type: P.CKA_LABEL }]);
        const v = attr?.value;
        if (Buffer.isBuffer(v)) out.push(v.toString("utf8"));
      }
      return out.sort();
    });
  }
}

const MAC_SUFFIX = ".mac.json";

/**
 * Development software store: one file per key, the 32-byte secret sealed with AES-256-GCM under a key derived from
 * the store passphrase (scrypt). Secret only by convention, as the rest of the software store.
 */
export class SoftwareMacKeys implements MacKeyStore {
  private readonly cache = new Map<string, Buffer>();

  constructor(private readonly dir: string, private readonly passphrase: string) {}

  private path(label: string): string {
    return join(this.dir, label + MAC_SUFFIX);
  }

  private kek(salt: Buffer): Buffer {
    return scryptSync(this.passphrase, salt, 32);
  }

  async generateMacKey(label: string): Promise<void> {
    checkMacLabel(label);
    if (existsSync(this.path(label))) throw new EdgeTrustError("HSM_KEY_EXISTS", `a MAC key labelled ${JSON.stringify(label)} exists already`);
    const secret = randomBytes(MAC_KEY_BYTES);
    const salt = randomBytes(16);
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", this.kek(salt), iv);
    const sealed = Buffer.concat([c.update(secret), c.final()]);
    const rec = { label, salt: salt.toString("base64"), iv: iv.toString("base64"), tag: c.getAuthTag().toString("base64"), sealed: sealed.toString("base64") };
    writeFileAtomic(this.path(label), JSON.stringify(rec) + "\n", 0o600);
    this.cache.set(label, secret);
  }

  private secret(label: string): Buffer {
    const hit = this.cache.get(label);
    if (hit) return hit;
    if (!existsSync(this.path(label))) throw notFound(label);
    const rec = JSON.parse(readFileSync(this.path(label), "utf8")) as Record<string, string>;
    try {
      const d = createDecipheriv("aes-256-gcm", this.kek(Buffer.from(rec.salt ?? "", "base64")), Buffer.from(rec.iv ?? "", "base64"));
      d.setAuthTag(Buffer.from(rec.tag ?? "", "base64"));
      const secret = Buffer.concat([d.update(Buffer.from(rec.sealed ?? "", "base64")), d.final()]);
      this.cache.set(label, secret);
      return secret;
    } catch (e) {
      throw new EdgeTrustError("KEYSTORE_SOFTWARE_PASSPHRASE", `cannot open MAC key ${label}: wrong passphrase or damaged file`, { cause: e });
    }
  }

  async macSign(label: string, data: Uint8Array): Promise<Buffer> {
    checkMacLabel(label);
    return createHmac("sha256", this.secret(label)).update(data).digest();
  }

  async deleteMacKey(label: string): Promise<boolean> {
    checkMacLabel(label);
    this.cache.delete(label);
    if (!existsSync(this.path(label))) return false;
    unlinkSync(this.path(label));
    return true;
  }

  async listMacKeys(): Promise<string[]> {
    return readdirSync(this.dir).filter((f) => f.endsWith(MAC_SUFFIX)).map((f) => f.slice(0, -MAC_SUFFIX.length)).sort();
  }
}
