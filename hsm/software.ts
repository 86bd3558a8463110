import { createPrivateKey, createPublicKey, generateKeyPair, randomBytes, sign as nodeSign, constants, type KeyObject } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, unlinkSync } from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { EdgeTrustError, createLogger, writeFileAtomic, type Logger } from "../common/index.js";
import type { KeyAlgorithm, KeyInfo, KeyRef, KeyStore, PublicKeyExport, SignatureScheme } from "./types.js";
import { KEY_ALGORITHMS } from "./types.js";
import { SoftwareMacKeys } from "./mac.js";

/**
 * Development-only key store: one encrypted PKCS#8 PEM file per key (PBES2, AES-256-CBC, passphrase) named by the
 * key's label, plus a JSON sidecar with its id and algorithm. Keys are "non-extractable" only by convention: anyone
 * with the passphrase and the files has them. Never use it in production — it says so loudly when opened.
 */

const generateKeyPairAsync = promisify(generateKeyPair);

const LABEL_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const ID_RE = /^(?:[0-9a-f]{2}){1,64}$/;
const PEM_SUFFIX = ".key.pem";
const META_SUFFIX = ".key.json";

interface Sidecar {
  label: string;
  id: string;
  algorithm: KeyAlgorithm;
  createdAt: string;
}

interface SoftwareKeyStoreOptions {
  /** Directory holding the key files (created 0700 if missing). */
  dir: string;
  /** The passphrase; when omitted it is read from `passphraseEnv`. */
  passphrase?: string;
  /** Environment variable holding the passphrase (default EDGETRUST_KEYSTORE_PASSPHRASE). */
  passphraseEnv?: string;
  logger?: Logger;
}

export class SoftwareKeyStore implements KeyStore {
  readonly kind = "software" as const;
  readonly dir: string;
  readonly #passphrase: string;
  readonly #cache = new Map<string, KeyObject>();
  /** Sidecars by label: saves two file-system calls per sign (the store is single-process, development only). */
  readonly #meta = new Map<string, Sidecar>();
  readonly #log: Logger;

  /** HMAC-SHA256 secret keys, sealed with the same passphrase (development only, as the rest). */
  readonly mac: SoftwareMacKeys;

  private constructor(dir: string, passphrase: string, log: Logger) {
    this.dir = dir;
    this.#passphrase = passphrase;
    this.#log = log;
    this.mac = new SoftwareMacKeys(dir, passphrase);
  }

  /** Open (creating if needed) a store; checks the passphrase against an existing key. */
  static async open(opts: SoftwareKeyStoreOptions): Promise<SoftwareKeyStore> {
    const envName = opts.passphraseEnv ?? "EDGETRUST_KEYSTORE_PASSPHRASE";
    const passphrase = opts.passphrase ?? process.env[envName];
    if (passphrase === undefined || passphrase.length === 0) {
      throw new EdgeTrustError("KEYSTORE_SOFTWARE_PASSPHRASE", "software key store passphrase is missing", {
        hint: `set ${envName} (development only)`,
      });
    }
    const dir = resolve(opts.dir);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const log = opts.logger ?? createLogger("hsm");
    log.warn({ dir }, "software key store: development only — keys are files on disk, never use in production");
    const store = new SoftwareKeyStore(dir, passphrase, log);
    const first = store.#labels()[0];
    if (first !== undefined) store.#load(first);
    return store;
  }

  async generateKey(label: string, algorithm: KeyAlgorithm, opts: { id?: string } = {}): Promise<KeyInfo> {
    checkLabel(label);
    if (!KEY_ALGORITHMS.includes(algorithm)) {
      throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `unsupported key algorithm ${String(algorithm)}`, {
        hint: `use one of ${KEY_ALGORITHMS.join(", ")}`,
      });
    }
    const id = (opts.id ?? randomBytes(8).toString("hex")).toLowerCase();
    if (!ID_RE.test(id)) throw new EdgeTrustError("INVALID_INPUT", `key id must be hex bytes, got ${JSON.stringify(id)}`);
    if (existsSync(this.#pemPath(label))) throw new EdgeTrustError("HSM_KEY_EXISTS", `key ${label} already exists`);
    if (this.#sidecars().some((s) => s.id === id)) throw new EdgeTrustError("HSM_KEY_EXISTS", `a key with id ${id} already exists`);
    const { privateKey } = await generate(algorithm);
    const pem = privateKey.export({ type: "pkcs8", format: "pem", cipher: "aes-256-cbc", passphrase: this.#passphrase });
    const meta: Sidecar = { label, id, algorithm, createdAt: new Date().toISOString() };
    writeFileAtomic(this.#pemPath(label), typeof pem === "string" ? pem : pem.toString("utf8"), 0o600);
    writeFileAtomic(this.#metaPath(label), JSON.stringify(meta, null, 2) + "\n", 0o600);
    this.#cache.set(label, privateKey);
    this.#meta.set(label, meta);
    return this.#info(meta);
  }

  async getKey(ref: KeyRef): Promise<KeyInfo> {
    return this.#info(this.#find(ref));
  }

  async getPublicKey(ref: KeyRef): Promise<PublicKeyExport> {
    const meta = this.#find(ref);
    const pub = createPublicKey(this.#load(meta.label));
    return {
      spki: pub.export({ type: "spki", format: "der" }),
      jwk: pub.export({ format: "jwk" }) as JsonWebKey,
      algorithm: meta.algorithm,
    };
  }

  async sign(ref: KeyRef, scheme: SignatureScheme, data: Uint8Array): Promise<Buffer> {
    const meta = this.#find(ref);
    const key = this.#load(meta.label);
    const isEc = meta.algorithm.startsWith("EC-");
    if (isEc !== (scheme.name === "ECDSA")) {
      throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `${scheme.name} cannot be used with a ${meta.algorithm} key`);
    }
    const hash = scheme.hash.replace("-", "").toLowerCase();
    switch (scheme.name) {
      case "ECDSA":
        return nodeSign(hash, data, { key, dsaEncoding: "ieee-p1363" });
      case "RSASSA-PKCS1-v1_5":
        return nodeSign(hash, data, { key, padding: constants.RSA_PKCS1_PADDING });
      case "RSA-PSS":
        return nodeSign(hash, data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: scheme.saltLength });
    }
  }

  async list(): Promise<KeyInfo[]> {
    return this.#sidecars().map((s) => this.#info(s));
  }

  async delete(ref: KeyRef): Promise<void> {
    const meta = this.#find(ref);
    unlinkSync(this.#pemPath(meta.label));
    unlinkSync(this.#metaPath(meta.label));
    this.#cache.delete(meta.label);
    this.#meta.delete(meta.label);
  }

  async eraseObjects(ref: { label: string; id: string }): Promise<number> {
    const meta = this.#sidecars().find((m) => m.label === ref.label && m.id === ref.id.toLowerCase());
    if (!meta) return 0;
    await this.delete({ label: meta.label });
    return 1;
  }

  async close(): Promise<void> {
    this.#cache.clear();
    this.#meta.clear();
  }

  /**
   * The key as an unencrypted PKCS#8 PEM — development only (certs-dev output, TLS `{ key }` for the software
   * backend). A PKCS#11 store has no equivalent by design.
   */
  async exportPrivateKeyPem(ref: KeyRef): Promise<string> {
    const meta = this.#find(ref);
    this.#log.debug({ label: meta.label }, "software key store: exporting a private key (development only)");
    return this.#load(meta.label).export({ type: "pkcs8", format: "pem" }).toString();
  }

  /** Bring an existing private key (PEM or KeyObject) into the store, e.g. a development CA key. */
  async importKey(label: string, key: KeyObject | string, opts: { id?: string } = {}): Promise<KeyInfo> {
    checkLabel(label);
    const privateKey = typeof key === "string" ? createPrivateKey(key) : key;
    const algorithm = algorithmOf(privateKey);
    const id = (opts.id ?? randomBytes(8).toString("hex")).toLowerCase();
    if (!ID_RE.test(id)) throw new EdgeTrustError("INVALID_INPUT", `key id must be hex bytes, got ${JSON.stringify(id)}`);
    if (existsSync(this.#pemPath(label))) throw new EdgeTrustError("HSM_KEY_EXISTS", `key ${label} already exists`);
    const pem = privateKey.export({ type: "pkcs8", format: "pem", cipher: "aes-256-cbc", passphrase: this.#passphrase });
    const meta: Sidecar = { label, id, algorithm, createdAt: new Date().toISOString() };
    writeFileAtomic(this.#pemPath(label), pem.toString(), 0o600);
    writeFileAtomic(this.#metaPath(label), JSON.stringify(meta, null, 2) + "\n", 0o600);
    this.#cache.set(label, privateKey);
    this.#meta.set(label, meta);
    return this.#info(meta);
  }

  #pemPath(label: string): string {
    return join(this.dir, label + PEM_SUFFIX);
  }

  #metaPath(label: string): string {
    return join(this.dir, label + META_SUFFIX);
  }

  #labels(): string[] {
    return readdirSync(this.dir)
      .filter((f) => f.endsWith(META_SUFFIX))
      .map((f) => f.slice(0, -META_SUFFIX.length))
      .filter((l) => LABEL_RE.test(l))
      .sort();
  }

  #sidecars(): Sidecar[] {
    return this.#labels().map((l) => this.#readSidecar(l));
  }

  #readSidecar(label: string): Sidecar {
    const cached = this.#meta.get(label);
    if (cached) return cached;
    const raw: unknown = JSON.parse(readFileSync(this.#metaPath(label), "utf8"));
    if (!isSidecar(raw) || raw.label !== label) {
      throw new EdgeTrustError("HSM_OPERATION_FAILED", `software key store sidecar for ${label} is malformed`);
    }
    this.#meta.set(label, raw);
    return raw;
  }

  #find(ref: KeyRef): Sidecar {
    if (ref.label === undefined && ref.id === undefined) {
      throw new EdgeTrustError("INVALID_INPUT", "a key reference needs a label or an id");
    }
    let found: Sidecar | undefined;
    if (ref.label !== undefined) {
      if (LABEL_RE.test(ref.label) && (this.#meta.has(ref.label) || existsSync(this.#metaPath(ref.label)))) found = this.#readSidecar(ref.label);
      if (found && ref.id !== undefined && found.id !== ref.id.toLowerCase()) found = undefined;
    } else if (ref.id !== undefined) {
      const id = ref.id.toLowerCase();
      found = [...this.#meta.values()].find((s) => s.id === id) ?? this.#sidecars().find((s) => s.id === id);
    }
    if (!found) {
      throw new EdgeTrustError("HSM_KEY_NOT_FOUND", `no key ${describeRef(ref)} in the software key store`, {
        hint: "generate it first (edgetrust hsm keygen) or check the label/id",
      });
    }
    return found;
  }

  #load(label: string): KeyObject {
    const cached = this.#cache.get(label);
    if (cached) return cached;
    const pem = readFileSync(this.#pemPath(label), "utf8");
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: pem, format: "pem", passphrase: this.#passphrase });
    } catch (e) {
      throw new EdgeTrustError("KEYSTORE_SOFTWARE_PASSPHRASE", `cannot decrypt software key ${label}: wrong passphrase`, {
        hint: "check EDGETRUST_KEYSTORE_PASSPHRASE",
        cause: e,
      });
    }
    this.#cache.set(label, key);
    return key;
  }

  #info(meta: Sidecar): KeyInfo {
    return {
      label: meta.label,
      id: meta.id,
      algorithm: meta.algorithm,
      uri: this.#pemPath(meta.label),
      extractable: false,
      sensitive: true,
    };
  }
}

function checkLabel(label: string): void {
  if (!LABEL_RE.test(label)) {
    throw new EdgeTrustError("INVALID_INPUT", `key label ${JSON.stringify(label)} is not allowed`, {
      hint: "use letters, digits, '.', '_' or '-' (it names a file)",
    });
  }
}

function describeRef(ref: KeyRef): string {
  return [ref.label !== undefined ? `label=${ref.label}` : "", ref.id !== undefined ? `id=${ref.id}` : ""].filter(Boolean).join(" ");
}

function isSidecar(v: unknown): v is Sidecar {
  if (typeof v !== "object" || v === null) return false;
  const o = v as Record<string, unknown>;
  return typeof o.label === "string" && typeof o.id === "string" && typeof o.algorithm === "string" &&
    (KEY_ALGORITHMS as readonly string[]).includes(o.algorithm);
}

async function generate(alg: KeyAlgorithm): Promise<{ privateKey: KeyObject }> {
  switch (alg) {
    case "EC-P256":
      return generateKeyPairAsync("ec", { namedCurve: "P-256" });
    case "EC-P384":
      return generateKeyPairAsync("ec", { namedCurve: "P-384" });
    case "RSA-2048":
      return generateKeyPairAsync("rsa", { modulusLength: 2048, publicExponent: 65537 });
    case "RSA-3072":
      return generateKeyPairAsync("rsa", { modulusLength: 3072, publicExponent: 65537 });
  }
}

/** The KeyAlgorithm of a Node key (private or public); throws for anything the stores do not support. */
function algorithmOf(key: KeyObject): KeyAlgorithm {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "ec") {
    if (d?.namedCurve === "prime256v1") return "EC-P256";
    if (d?.namedCurve === "secp384r1") return "EC-P384";
  } else if (key.asymmetricKeyType === "rsa") {
    if (d?.modulusLength === 2048) return "RSA-2048";
    if (d?.modulusLength === 3072) return "RSA-3072";
  }
  throw new EdgeTrustError("HSM_MECHANISM_UNSUPPORTED", `unsupported key type ${key.asymmetricKeyType ?? "?"} ${d?.namedCurve ?? d?.modulusLength ?? ""}`.trim(), {
    hint: `use one of ${KEY_ALGORITHMS.join(", ")}`,
  });
}
