import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request as httpsRequest, type Agent } from "node:https";
import * as x509 from "@peculiar/x509";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { CaStore } from "./store.js";
import { PostgresDb, SqliteDb } from "./db.js";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Writable } from "node:stream";
import { Value } from "@sinclair/typebox/value";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken, type KeyStore } from "../hsm/index.js";
import { CertificateAuthority, type ProfileOverrides } from "./ca.js";
import { CaConfig } from "./config.js";
import { initCa, type InitCaResult } from "./init.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";

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


/** Two store handles on one PostgreSQL schema, each with its own pool: two `ca serve` processes as far as the store can tell. */
export interface TwoStores { a: CaStore; b: CaStore; close(): Promise<void> }
export async function twoPgStores(schema = uniqueSchema()): Promise<TwoStores> {
  const dbA = new PostgresDb(DATABASE_URL, schema);
  await dbA.init();
  const a = await CaStore.fromDb(dbA);
  const dbB = new PostgresDb(DATABASE_URL, schema);
  await dbB.init();
  const b = await CaStore.fromDb(dbB);
  return { a, b, close: async () => { await b.close(); await dbA.dropSchema(); await a.close(); } };
}

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

const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));

/** `p`, or a rejection naming `what` (and, when given, what `detail` says then) after `ms`: a bound on a hang, not a timing assertion. */
export function within<T>(p: Promise<T>, ms: number, what: string, detail?: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms${detail ? `\n${detail()}` : ""}`)), ms);
  });
  return Promise.race([p, bound]).finally(() => clearTimeout(timer));
}

/** The line `ca serve` prints on stdout once every worker listens. */
export interface CaServeLine { listening: string; revocation: string | null; workers: number; pid: number }

export interface CaServe {
  /** There at once, so a caller can register it for clean-up before the start is awaited. */
  proc: ChildProcess;
  /** The HTTPS URL, once the service listens; rejects with its stderr if it exits first or does not listen in time. */
  listening: Promise<string>;
  /** The whole start-up line (revocation URL, workers, pid); settles with `listening`. */
  started: Promise<CaServeLine>;
  /** Everything the service (primary and workers) wrote to stderr so far. */
  stderr(): string;
  /** Its exit code (null after a signal), once it has exited — at once if it already has. */
  exited: Promise<number | null>;
  /**
   * Send `signal` (SIGTERM) and wait for the exit code. Never hangs: an already exited service answers at once, and one
   * still running after `ms` is killed (its process group when detached) and the promise rejects with its stderr.
   */
  stop(opts?: { signal?: NodeJS.Signals; ms?: number }): Promise<number | null>;
}

/** Services started in this process and not yet exited: killed when the test file's process exits, whatever failed. */
const liveServes = new Set<ChildProcess>();
/** Those started detached: each leads its own process group, and a kill takes its workers with it. */
const groupLeaders = new WeakSet<ChildProcess>();
process.once("exit", () => {
  for (const p of liveServes) killServe(p);
});

function killServe(p: ChildProcess): void {
  if (p.pid === undefined || p.exitCode !== null || p.signalCode !== null) return;
  try {
    if (groupLeaders.has(p)) process.kill(-p.pid, "SIGKILL");
    else p.kill("SIGKILL");
  } catch {
    // gone in the meantime
  }
}

/** The tail of a service's stderr for a failure message (a crash-looping service can write a lot). */
const tail = (text: string, max = 6_000): string => (text.length > max ? `…${text.slice(-max)}` : text) || "(nothing on stderr)";

/**
 * `ca serve <args>` as a child process, from the current sources as one esbuild bundle (test/fixtures/cli-bundle.ts:
 * the test entry point, fault points included; a start through tsx loads hundreds of modules through the loader
 * thread, in the primary and again in every worker — tens of seconds under load). Every wait is bounded and names
 * its step with the service's stderr: no listening line within `startMs` (default 90 s) kills it and rejects.
 */
export function startCaServe(args: string[], env: NodeJS.ProcessEnv, opts: { detached?: boolean; startMs?: number } = {}): CaServe {
  const startMs = opts.startMs ?? 90_000;
  const proc = spawn(process.execPath, [...cliBundleArgs(), "ca", "serve", ...args], { cwd: REPO_ROOT, env, stdio: ["ignore", "pipe", "pipe"], detached: opts.detached ?? false });
  if (opts.detached) groupLeaders.add(proc);
  liveServes.add(proc);
  let out = "";
  let err = "";
  const stderr = () => err;
  proc.stderr?.on("data", (c: Buffer) => { err += c.toString(); });
  const exited = new Promise<number | null>((resolve) => {
    proc.once("exit", (code) => { liveServes.delete(proc); resolve(code); });
  });
  // stderr can still be arriving at 'exit'; 'close' waits for it, but also for any worker still holding the pipe.
  const closed = new Promise<void>((resolve) => proc.once("close", () => resolve()));
  const settled = () => Promise.race([closed, new Promise<void>((resolve) => setTimeout(resolve, 2_000).unref())]);
  // spawn failing (ENOENT, EAGAIN) emits 'error' and no 'exit'.
  proc.once("error", (e) => { err += `spawn failed: ${e.message}\n`; });
  const started = new Promise<CaServeLine>((resolve, reject) => {
    proc.stdout?.on("data", (c: Buffer) => {
      out += c.toString();
      const line = out.split("\n").find((l) => l.includes('"listening"'));
      if (!line) return;
      try {
        resolve(JSON.parse(line) as CaServeLine);
      } catch {
        // the line is not complete yet
      }
    });
    void exited.then(settled).then(() => reject(new Error(`ca serve ${args.join(" ")} exited ${proc.exitCode ?? proc.signalCode} before it listened; stderr:\n${tail(err)}`)));
    proc.once("error", (e) => reject(new Error(`ca serve could not be started: ${e.message}`)));
  });
  const bounded = within(started, startMs, `ca serve ${args.join(" ")} (pid ${proc.pid}): no listening line`, () => `stdout: ${out.trim() || "(nothing)"}\nstderr:\n${tail(err)}`)
    .catch((e: unknown) => { killServe(proc); throw e; });
  // A caller that awaits only `listening` must not see an unhandled rejection from `started`, nor the reverse.
  bounded.catch(() => undefined);
  const listening = bounded.then((l) => l.listening);
  listening.catch(() => undefined);
  return {
    proc, listening, started: bounded, stderr, exited,
    stop: async ({ signal = "SIGTERM", ms = 30_000 } = {}) => {
      // The primary alone: it stops its workers (what systemd's SIGTERM does, too).
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return within(exited, ms, `ca serve (pid ${proc.pid}) still running ${ms} ms after ${signal}`, () => `stderr:\n${tail(err)}`)
        .catch((e: unknown) => { killServe(proc); throw e; });
    },
  };
}

/** A JSON answer of `ca serve` to a bearer-token request (status, content type, parsed body; `{}` when empty). */
export interface JsonReply { status: number; type: string; json: Record<string, unknown> }

/** One bearer-token HTTPS request with a JSON body; an unanswered request fails after 30 s instead of stalling a test. */
export function callJson(agent: Agent, method: string, url: string, token: string, body?: unknown): Promise<JsonReply> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const headers: Record<string, string> = { authorization: `Bearer ${token}` };
  if (payload) Object.assign(headers, { "content-type": "application/json", "content-length": String(payload.length) });
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method, agent, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        try {
          resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"] ?? ""), json: JSON.parse(Buffer.concat(chunks).toString() || "{}") as Record<string, unknown> });
        } catch (e) {
          reject(e as Error);
        }
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${url}: no answer within 30 s`)));
    req.end(payload);
  });
}

/** A P-256 CSR for `CN=<cn>` with a fresh key. */
export async function csrFor(cn: string): Promise<string> {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
  return (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem");
}
