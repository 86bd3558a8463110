/** Test support for device-identity tests (not part of the public surface): a real ca-service on loopback, SoftHSM tokens. */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Writable } from "node:stream";
import { createLogger, type Logger } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, engineConfig, initToken, type KeyStore, type SoftHsmDir } from "../hsm/index.js";
import { createCaServer, type CaConfig, type CaServer, type CertificateAuthority, type CaStore, type ProfileOverrides } from "../ca-service/index.js";
import { makeTestCa, sqliteStore, testConfig, type TestStore } from "../ca-service/test-helpers.js";

const ROOT = join(import.meta.dirname, "..");

export const execFileAsync = promisify(execFile);
export const DEVICE_PIN = "device-pin-1234";
const CA_PIN = "ca-pin-1234";
export const TRUST_DOMAIN = "test.edgetrust";

export const silentLogger = (): Logger => createLogger("device-identity-test", { level: "silent", destination: new Writable({ write(_c, _e, cb) { cb(); } }) });

/** One SoftHSM directory for the test file with two tokens: the CA's and the device's. */
export interface Tokens {
  hsm: SoftHsmDir;
  caKeys: KeyStore;
  openDevice(): Promise<KeyStore>;
  /** OPENSSL_CONF registering the pkcs11 engine (for child processes that do TLS with token keys). */
  opensslConf: string;
  pinFile: string;
}

export async function makeTokens(): Promise<Tokens> {
  const hsm = createSoftHsmDir();
  initToken({ module: SOFTHSM_MODULE, label: "ca", soPin: "so-" + CA_PIN, userPin: CA_PIN });
  initToken({ module: SOFTHSM_MODULE, label: "device", soPin: "so-" + DEVICE_PIN, userPin: DEVICE_PIN });
  const caKeys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "ca", pin: CA_PIN, logger: silentLogger() });
  const opensslConf = join(hsm.dir, "openssl.cnf");
  writeFileSync(opensslConf, engineConfig({ module: SOFTHSM_MODULE }));
  const pinFile = join(hsm.dir, "device.pin");
  writeFileSync(pinFile, DEVICE_PIN + "\n", { mode: 0o600 });
  return {
    hsm, caKeys, opensslConf, pinFile,
    openDevice: () => Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "device", pin: DEVICE_PIN, logger: silentLogger() }),
  };
}

export interface RunningCa {
  url: string;
  port: number;
  /** PEM the CA's HTTPS certificate chains to (roots + issuing CAs). */
  trustPem: string;
  adminToken: string;
  ca: CertificateAuthority;
  store: CaStore;
  server: CaServer;
  /** Stop listening (the device sees the CA as down). */
  stop(): Promise<void>;
  /** Listen again on the same port (optionally with other profile lifetimes). */
  restart(profiles?: ProfileOverrides): Promise<void>;
  close(): Promise<void>;
}

/** A real ca-service (SQLite, CA keys in SoftHSM) listening HTTPS on loopback, with an enrolled device record. */
export async function startCa(tokens: Tokens, opts: { deviceId: string; profiles?: ProfileOverrides; renewAfterExpiryDays?: number; config?: Partial<CaConfig> } = { deviceId: "dev1" }): Promise<RunningCa> {
  const ts: TestStore = await sqliteStore();
  const config = testConfig({ trustDomain: TRUST_DOMAIN, revocationPort: -1, ...(opts.renewAfterExpiryDays !== undefined ? { renewAfterExpiryDays: opts.renewAfterExpiryDays } : {}), ...(opts.config ?? {}) });
  const tca = await makeTestCa(ts.store, tokens.caKeys, config);
  const ca = opts.profiles ? await tca.variant({ profiles: opts.profiles }) : tca.ca;
  const admin = await ts.store.createToken("factory-line", "admin", "test");
  await ts.store.upsertEnrollment({ deviceId: opts.deviceId, kind: "device", commonName: opts.deviceId, dnsNames: ["edgehub", "localhost"] }, "test");
  let server = await createCaServer(config, { ca, store: ts.store, logger: silentLogger() });
  const { url } = await server.listen();
  const port = Number(new URL(url).port);
  const running: RunningCa = {
    url, port, trustPem: ca.trustBundlePem(), adminToken: admin.token, ca, store: ts.store, server,
    stop: async () => { await running.server.close(); },
    restart: async (profiles?: ProfileOverrides) => {
      const engine = profiles ? await tca.variant({ profiles }) : ca;
      // A fresh self-issued HTTPS certificate from the same issuing CA: the device's trust bundle still covers it.
      server = await createCaServer({ ...config, port }, { ca: engine, store: ts.store, logger: silentLogger() });
      running.server = server;
      await server.listen();
    },
    close: async () => {
      await running.server.close().catch(() => undefined);
      await ts.cleanup();
    },
  };
  return running;
}

export function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** `edgetrust device run` in a child process (OPENSSL_CONF must register the pkcs11 engine), its JSON log lines collected. */
export interface Daemon {
  proc: ChildProcess;
  logs: Record<string, unknown>[];
  stderr: () => string;
  waitLog(pred: (l: Record<string, unknown>) => boolean, what: string, ms?: number): Promise<Record<string, unknown>>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function runDaemon(configFile: string, env: Record<string, string>): Daemon {
  const proc = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/cli-main.ts"), "device", "run", "-c", configFile], { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  const logs: Record<string, unknown>[] = [];
  let err = "";
  let partial = "";
  const waiters = new Set<() => void>();
  proc.stderr?.on("data", (d: Buffer) => {
    err += d.toString();
    partial += d.toString();
    const lines = partial.split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        /* not a log line (engine noise) */
      }
    }
    for (const w of waiters) w();
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => proc.on("exit", (code, signal) => { for (const w of waiters) w(); r({ code, signal }); }));
  return {
    proc, logs, exit, stderr: () => err,
    waitLog: (pred, what, ms = 40_000) => new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = logs.find(pred);
        if (hit) { waiters.delete(check); clearTimeout(t); resolve(hit); return; }
        if (proc.exitCode !== null || proc.signalCode !== null) { waiters.delete(check); clearTimeout(t); reject(new Error(`daemon exited waiting for ${what}:\n${err.slice(-3000)}`)); }
      };
      const t = setTimeout(() => { waiters.delete(check); reject(new Error(`timed out waiting for ${what}:\n${err.slice(-3000)}`)); }, ms);
      waiters.add(check);
      check();
    }),
  };
}

