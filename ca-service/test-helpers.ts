import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { CaStore } from "./store.js";
import { PostgresDb, SqliteDb } from "./db.js";
import { execFileSync } from "node:child_process";
import { Writable } from "node:stream";
import { Value } from "@sinclair/typebox/value";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken, type KeyStore } from "../hsm/index.js";
import { CertificateAuthority, type ProfileOverrides } from "./ca.js";
import { CaConfig } from "./config.js";
import { initCa, type InitCaResult } from "./init.js";

/** Test support shared by ca-service tests (not part of the public surface). */
export const DATABASE_URL = process.env.DATABASE_URL ?? "";
export const PG_SKIP_REASON = "DATABASE_URL is not set: PostgreSQL store tests skipped (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)";

/** Say why PostgreSQL tests skip (called by the files that have them). */
export function announcePgSkip(file: string): void {
  if (!DATABASE_URL) process.stderr.write(`${file}: ${PG_SKIP_REASON}\n`);
}

/** A unique PG schema name per test run so parallel runs never collide. */
export function uniqueSchema(prefix = "et_ca"): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString("hex")}`;
}

export interface TestStore {
  store: CaStore;
  cleanup(): Promise<void>;
}

export async function sqliteStore(): Promise<TestStore> {
  const dir = mkdtempSync(join(tmpdir(), "et-ca-"));
  const store = await CaStore.fromDb(new SqliteDb(join(dir, "ca.db")));
  return { store, cleanup: async () => { await store.close(); rmSync(dir, { recursive: true, force: true }); } };
}

export async function pgStore(schema = uniqueSchema()): Promise<TestStore> {
  const db = new PostgresDb(DATABASE_URL, schema);
  await db.init();
  const store = await CaStore.fromDb(db);
  return {
    store,
    cleanup: async () => {
      await db.dropSchema();
      await store.close();
    },
  };
}

// ---- a whole CA on a private SoftHSM token ------------------------------------------------------------------


export const quietLogger = () => createLogger("ca-service", { level: "warn", destination: new Writable({ write(_c, _e, cb) { cb(); } }) });

export const TEST_PIN = "ca-test-pin-1234";

export interface SoftHsm {
  dir: string;
  conf: string;
  tokenLabel: string;
  open(): Promise<KeyStore>;
  cleanup(): void;
}

/** A private SoftHSM token for this test file (SOFTHSM2_CONF is set in this process). */
export function softHsm(tokenLabel = "et-ca-test"): SoftHsm {
  const d = createSoftHsmDir();
  initToken({ module: SOFTHSM_MODULE, label: tokenLabel, soPin: "so-" + TEST_PIN, userPin: TEST_PIN });
  return {
    dir: d.dir, conf: d.conf, tokenLabel,
    open: () => Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel, pin: TEST_PIN, logger: quietLogger() }),
    cleanup: () => d.cleanup(),
  };
}

export function testConfig(over: Partial<CaConfig> = {}): CaConfig {
  const base = Value.Default(CaConfig, {}) as CaConfig;
  return { ...base, host: "127.0.0.1", port: 0, revocationPort: 0, trustDomain: "test.edgetrust", ...over };
}

export interface TestCa {
  store: CaStore;
  keys: KeyStore;
  ca: CertificateAuthority;
  init: InitCaResult;
  config: CaConfig;
  /** Another engine on the same store and keys with other options (profile overrides, renewal window). */
  variant(opts: { profiles?: ProfileOverrides; renewAfterExpiryDays?: number }): Promise<CertificateAuthority>;
}

export async function makeTestCa(store: CaStore, keys: KeyStore, config: CaConfig): Promise<TestCa> {
  const init = await initCa(store, keys, { logger: quietLogger(), publicBaseUrl: config.publicBaseUrl });
  const opts = { trustDomain: config.trustDomain, publicBaseUrl: config.publicBaseUrl, renewAfterExpiryDays: config.renewAfterExpiryDays, logger: quietLogger() };
  const ca = await CertificateAuthority.load(store, keys, opts);
  return {
    store, keys, ca, init, config,
    variant: (v) => CertificateAuthority.load(store, keys, { ...opts, ...v }),
  };
}

/** openssl on the PATH, in a directory; returns stdout. */
export function openssl(cwd: string, args: string[], input?: string): string {
  return execFileSync("openssl", args, { cwd, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"], ...(input !== undefined ? { input } : {}) });
}

/** openssl without blocking the event loop (needed when it talks to a server in this process). */
export async function opensslAsync(cwd: string, args: string[]): Promise<string> {
  const { execFile } = await import("node:child_process");
  return new Promise((resolve, reject) => {
    execFile("openssl", args, { cwd, encoding: "utf8" }, (err, stdout, stderr) => (err ? reject(Object.assign(err, { stdout, stderr })) : resolve(stdout + stderr)));
  });
}

/** An EC P-256 key and CSR made by openssl; `extra` adds `-addext` values. */
export function opensslCsr(cwd: string, name: string, opts: { cn?: string; addext?: string[]; keyArgs?: string[] } = {}): { key: string; csr: string; keyFile: string; csrFile: string } {
  const keyFile = `${name}.key`;
  const csrFile = `${name}.csr`;
  openssl(cwd, ["genpkey", ...(opts.keyArgs ?? ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]), "-out", keyFile]);
  openssl(cwd, ["req", "-new", "-key", keyFile, "-subj", `/CN=${opts.cn ?? name}`, ...(opts.addext ?? []).flatMap((e) => ["-addext", e]), "-out", csrFile]);
  return { key: readFileSync(join(cwd, keyFile), "utf8"), csr: readFileSync(join(cwd, csrFile), "utf8"), keyFile, csrFile };
}

export function writeFiles(dir: string, files: Record<string, string | Uint8Array>): void {
  for (const [k, v] of Object.entries(files)) writeFileSync(join(dir, k), v);
}
