import { X509Certificate, createHash } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";
import type tls from "node:tls";
import { EdgeTrustError, redactString } from "../common/index.js";
import type { KeyRef, KeyStore } from "./types.js";
import { readPin } from "./pin.js";

/**
 * TLS key source: Node TLS options for a KeyStore key, such that a PKCS#11 private key never leaves its token.
 *
 * PKCS#11 keys go through OpenSSL's `pkcs11` engine (libp11, Debian `libengine-pkcs11-openssl`), which Node 20
 * (OpenSSL 3.0) loads with `privateKeyEngine` and asks for the key named by `privateKeyIdentifier`, a `pkcs11:` URI
 * with the PIN in it. The identifier therefore is a secret: never log it (`describeTlsKey` gives a redacted form).
 *
 * How the engine is found, as measured here (Node 20.20 / OpenSSL 3.0, libp11 0.4.12):
 * - `privateKeyEngine: "<path>/pkcs11.so"` makes Node load the engine dynamically for every secure context. Only the
 *   FIRST such context in a process works; every later one fails with `engine routines::init failed` (the reloaded
 *   engine does not initialise again). Fine for a one-shot tool, not for a daemon with a server and a client context.
 * - Registering the engine through OpenSSL config — `OPENSSL_CONF` naming a file with a `nodejs_conf` section whose
 *   engine section has `dynamic_path` and `MODULE_PATH` (see `engineConfig`) — and passing the engine *id*
 *   `privateKeyEngine: "pkcs11"` works for any number of contexts. Node reads OPENSSL_CONF only at start-up, so set
 *   it in the environment of the process (daemons' unit files, tests' child processes). This is the reliable way.
 * - Which PKCS#11 module the engine loads: `MODULE_PATH` from that config, else the `PKCS11_MODULE_PATH` environment
 *   variable, else p11-kit-proxy (every module in /usr/share/p11-kit/modules — SoftHSM, but also tpm2-pkcs11 and
 *   OpenSC, which print TCTI errors and slow the start).
 * - SoftHSM reads `SOFTHSM2_CONF` at its first C_Initialize in the process; pkcs11js and the engine share that one
 *   loaded library, so it is one token directory per process (vitest runs each test file in its own process). With
 *   `init = 0` in the engine section the engine initialises lazily, so SOFTHSM2_CONF may still be set at run time
 *   before the first TLS context or key store.
 * - libp11 prints "bad engine id" on stderr when it is bound; harmless.
 *
 * Node documents engines as deprecated (DEP0183); keep every use behind this module.
 */

/** The engine id the OpenSSL config registers (use it as `hsm.engine` when OPENSSL_CONF registers the engine). */
export const ENGINE_ID = "pkcs11";
export const DEFAULT_ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";

export type TlsKeyOptions =
  | { privateKeyEngine: string; privateKeyIdentifier: string }
  | { key: string };

interface TlsKeySourceOptions {
  /** OpenSSL engine: its id (`pkcs11`, registered by OPENSSL_CONF: reliable) or its .so path (one context per process). */
  engine?: string;
  /** The token's user PIN (PKCS#11 only). */
  pin?: string;
  /** PKCS#11 module the engine must load (config `hsm.module`); sets PKCS11_MODULE_PATH unless already set. */
  module?: string;
  /** Token label, when the key's URI does not carry it. */
  tokenLabel?: string;
}

/** What a software store offers (hsm/software.ts); kept structural so this module does not load it. */
interface PemExporter {
  exportPrivateKeyPem(ref: KeyRef): Promise<string>;
}

function hasPemExport(s: KeyStore): s is KeyStore & PemExporter {
  return typeof (s as Partial<PemExporter>).exportPrivateKeyPem === "function";
}

/** Percent-encode a value for a pkcs11: URI attribute (RFC 7512 pchar minus the separators). */
function pct(v: string): string {
  return Array.from(Buffer.from(v, "utf8"))
    .map((b) => (/[A-Za-z0-9\-._~]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).padStart(2, "0").toUpperCase()}`))
    .join("");
}

/**
 * The engine identifier for a token key: `pkcs11:token=…;object=…;id=…;type=private;pin-source=file:…`. Built from
 * the key's own (PIN-less) URI; any `type`/`pin-*` attribute and query in it is replaced. The PIN goes by file, never
 * by value: libp11 prints the whole identifier to stderr when it cannot find a key, and stderr ends up in logs.
 */
export function engineKeyIdentifier(keyUri: string, pin: { file: string }, tokenLabel?: string): string {
  if (!keyUri.startsWith("pkcs11:")) throw new EdgeTrustError("INVALID_INPUT", "not a pkcs11: URI");
  const [path = ""] = keyUri.slice("pkcs11:".length).split("?");
  const attrs = path.split(";").filter((a) => a !== "" && !/^(type|pin-value|pin-source)=/i.test(a));
  if (!attrs.some((a) => a.startsWith("token="))) {
    if (!tokenLabel) throw new EdgeTrustError("INVALID_INPUT", "the key URI names no token and no token label was given");
    attrs.unshift(`token=${pct(tokenLabel)}`);
  }
  return `pkcs11:${[...attrs, "type=private", `pin-source=file:${pin.file}`].join(";")}`;
}

const pinFiles = new Map<string, string>();

/**
 * The PIN, exactly (the operator's PIN file may end in a newline the engine would keep), written once per process to
 * a file only this user can read, in a private directory removed at exit, for the engine's `pin-source`.
 */
function privatePinFile(pin: string): string {
  const key = createHash("sha256").update(pin).digest("hex");
  let file = pinFiles.get(key);
  if (!file) {
    const dir = mkdtempSync(join(tmpdir(), "edgetrust-pin-"));
    chmodSync(dir, 0o700);
    file = join(dir, "pin");
    writeFileSync(file, pin, { mode: 0o600 });
    pinFiles.set(key, file);
    if (pinFiles.size === 1) process.once("exit", () => { for (const f of pinFiles.values()) rmSync(dirname(f), { recursive: true, force: true }); });
  }
  return file;
}

/** Node TLS options (`privateKeyEngine` + `privateKeyIdentifier`, or `key` for the software store) for a key. */
export async function tlsKeyOptions(store: KeyStore, ref: KeyRef, opts: TlsKeySourceOptions = {}): Promise<TlsKeyOptions> {
  if (store.kind === "software") {
    if (!hasPemExport(store)) throw new EdgeTrustError("INTERNAL", "software key store cannot export its key for TLS");
    return { key: await store.exportPrivateKeyPem(ref) };
  }
  const engine = opts.engine ?? defaultEngine();
  if (engine.includes("/") && !existsSync(engine)) {
    throw new EdgeTrustError("HSM_MODULE_NOT_FOUND", `OpenSSL engine ${engine} not found`, { hint: "install libengine-pkcs11-openssl or set hsm.engine" });
  }
  if (opts.pin === undefined || opts.pin === "") {
    throw new EdgeTrustError("HSM_PIN_MISSING", "the TLS key source needs the token PIN", { hint: "set hsm.pinFile or the PIN environment variable" });
  }
  if (opts.module) usePkcs11Module(opts.module);
  const info = await store.getKey(ref);
  return { privateKeyEngine: engine, privateKeyIdentifier: engineKeyIdentifier(info.uri, { file: privatePinFile(opts.pin) }, opts.tokenLabel) };
}

/**
 * The engine to name when the caller gives none: the id `pkcs11` when this process's OPENSSL_CONF registers it
 * (reliable), else the .so path (one TLS context per process).
 */
export function defaultEngine(env: NodeJS.ProcessEnv = process.env): string {
  const conf = env.OPENSSL_CONF;
  if (conf) {
    try {
      if (new RegExp(`^\\s*engine_id\\s*=\\s*${ENGINE_ID}\\s*$`, "m").test(readFileSync(conf, "utf8"))) return ENGINE_ID;
    } catch {
      /* unreadable config: fall back to the path */
    }
  }
  return DEFAULT_ENGINE;
}

/**
 * Make the engine load `module` (rather than p11-kit-proxy) — only effective before the engine is first used in this
 * process, and never overriding an explicit PKCS11_MODULE_PATH.
 */
function usePkcs11Module(module: string): void {
  if (process.env.PKCS11_MODULE_PATH === undefined || process.env.PKCS11_MODULE_PATH === "") process.env.PKCS11_MODULE_PATH = module;
}

/** A loggable description of TLS key options: the PIN redacted, a software key never shown. */
export function describeTlsKey(o: TlsKeyOptions): string {
  if ("key" in o) return "software key (PEM, development only)";
  return `engine ${o.privateKeyEngine} key ${redactString(o.privateKeyIdentifier)}`;
}

/**
 * An OpenSSL config that registers the pkcs11 engine for Node (`nodejs_conf`) and for the openssl CLI
 * (`openssl_conf`); point OPENSSL_CONF at it when starting the process, then use engine id `pkcs11`.
 */
export function engineConfig(opts: { module: string; enginePath?: string; init?: boolean }): string {
  return [
    "# edgetrust: the OpenSSL pkcs11 engine, so TLS private keys stay in the token",
    "nodejs_conf = edgetrust_openssl_init",
    "openssl_conf = edgetrust_openssl_init",
    "",
    "[edgetrust_openssl_init]",
    "engines = edgetrust_engines",
    "",
    "[edgetrust_engines]",
    `${ENGINE_ID} = edgetrust_pkcs11_engine`,
    "",
    "[edgetrust_pkcs11_engine]",
    `engine_id = ${ENGINE_ID}`,
    `dynamic_path = ${opts.enginePath ?? DEFAULT_ENGINE}`,
    `MODULE_PATH = ${opts.module}`,
    `init = ${opts.init ? 1 : 0}`,
    "",
  ].join("\n");
}

/** `tls.createSecureContext` with the engine's opaque failure turned into a one-line reason and what to do. */
export function createTlsSecureContext(options: tls.SecureContextOptions): tls.SecureContext {
  try {
    // node:tls loaded here, at the first TLS context, not at the daemon's start (see common/http-client.ts).
    return (createRequire(import.meta.url)("node:tls") as typeof tls).createSecureContext(options);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    if (/engine/i.test(msg)) {
      throw new EdgeTrustError("HSM_OPERATION_FAILED", `TLS key from the OpenSSL engine failed: ${redactString(msg)}`, {
        hint: "register the engine with OPENSSL_CONF (hsm/tls.ts engineConfig) and use engine id pkcs11; an engine .so path works for one TLS context per process only",
        cause: e,
      });
    }
    throw e;
  }
}

/**
 * A TLS private key named the way config files name it: `hsm:<label>` (the key stays in the token; PIN from the hsm
 * section) or the path of a PEM file (development). `openStore` is called only for `hsm:` keys.
 */
export async function tlsKeyFromSpec(
  spec: string,
  openStore: () => Promise<KeyStore>,
  cfg: { engine: string; module: string; pinFile: string; pinEnv: string; tokenLabel?: string },
  certPem?: string | Buffer,
): Promise<TlsKeyOptions> {
  if (!spec.startsWith("hsm:")) return { key: readFileSync(spec, "utf8") };
  const store = await openStore();
  const pin = store.kind === "pkcs11" ? readPin({ pinFile: cfg.pinFile, pinEnv: cfg.pinEnv }) : undefined;
  // The configured default is the engine's .so path, which backs only the first TLS context of a process; daemons
  // make many (a server, clients, one per reload). When OPENSSL_CONF registers the engine, use its id instead.
  const engine = cfg.engine === DEFAULT_ENGINE ? undefined : cfg.engine;
  const label = certPem === undefined ? spec.slice(4) : await currentKeyLabel(store, spec.slice(4), certPem);
  return tlsKeyOptions(store, { label }, {
    module: cfg.module, ...(engine ? { engine } : {}), ...(pin ? { pin } : {}), ...(cfg.tokenLabel ? { tokenLabel: cfg.tokenLabel } : {}),
  });
}

/**
 * The certificate in force and the token key that belongs to it, for a consumer that re-reads both before every
 * connection. A read can land inside a rekey: the certificate read just before the identity daemon switched
 * generations, its key erased just after. The key then matches neither label; reading the certificate again gives the
 * renewed one, whose key exists. One retry: a second miss is a real mismatch and is reported.
 */
export async function tlsCredentialsFromFile<C extends Buffer | string>(
  spec: string,
  readCert: () => C,
  openStore: () => Promise<KeyStore>,
  cfg: { engine: string; module: string; pinFile: string; pinEnv: string; tokenLabel?: string },
): Promise<{ cert: C } & TlsKeyOptions> {
  for (let attempt = 0; ; attempt++) {
    const cert = readCert();
    try {
      return { cert, ...(await tlsKeyFromSpec(spec, openStore, cfg, cert)) };
    } catch (e) {
      if (attempt > 0 || !(e instanceof EdgeTrustError) || e.code !== "HSM_KEY_NOT_FOUND") throw e;
    }
  }
}

/**
 * The label of the key that belongs to the certificate in force. A rotating key (device-identity `rotateKeys`)
 * alternates between `<label>` and `<label>.1`, and the old one is erased after a rekey renewal; a consumer configured
 * with `hsm:<label>` therefore follows whichever of the two has the certificate's public key, so it never presents a
 * certificate with a key that is not its own (or one that no longer exists).
 */
export async function currentKeyLabel(store: KeyStore, label: string, certPem: string | Buffer): Promise<string> {
  const base = label.endsWith(".1") ? label.slice(0, -2) : label;
  const want = new X509Certificate(certPem).publicKey.export({ type: "spki", format: "der" });
  for (const candidate of [base, `${base}.1`]) {
    const spki = await store.getPublicKey({ label: candidate }).then((k) => k.spki, () => undefined);
    if (spki?.equals(want)) return candidate;
  }
  throw new EdgeTrustError("HSM_KEY_NOT_FOUND", `neither key ${base} nor ${base}.1 matches the certificate's public key`, {
    hint: "the certificate and the token's key are out of step: renew the certificate (device renew) or point the setting at the right key",
  });
}
