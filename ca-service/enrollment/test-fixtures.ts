import "reflect-metadata";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFile } from "node:child_process";
import * as x509 from "@peculiar/x509";
import { createCaServer, type CaServer } from "../server.js";
import type { CaConfig } from "../config.js";
import { SOFTHSM_MODULE, initToken } from "../../hsm/index.js";
import { TEST_PIN, makeTestCa, quietLogger, softHsm, sqliteStore, testConfig, type SoftHsm, type TestCa, type TestStore } from "../test-helpers.js";

/** Test support for the enrollment API: a CA on a private SoftHSM token and SQLite, served over HTTPS. */

export interface Res {
  status: number;
  type: string;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  json: () => Record<string, unknown>;
}

export interface CallOptions {
  token?: string;
  authorization?: string;
  body?: unknown;
  raw?: Buffer | string;
  contentType?: string;
  headers?: Record<string, string>;
  cert?: string;
  key?: string;
}

export interface EnrollmentCa {
  t: TestCa;
  ts: TestStore;
  hsm: SoftHsm;
  server: CaServer;
  base: string;
  rootPem: string;
  dir: string;
  call(method: string, path: string, opts?: CallOptions): Promise<Res>;
  close(): Promise<void>;
}

/** `deviceTokens`: extra SoftHSM tokens (PIN TEST_PIN) created before the module is first opened, for device keys. */
export async function startEnrollmentCa(over: Partial<CaConfig> = {}, opts: { deviceTokens?: string[] } = {}): Promise<EnrollmentCa> {
  const hsm = softHsm("et-enroll-test");
  for (const label of opts.deviceTokens ?? []) initToken({ module: SOFTHSM_MODULE, label, soPin: `so-${TEST_PIN}`, userPin: TEST_PIN });
  const ts = await sqliteStore();
  const dir = mkdtempSync(join(tmpdir(), "et-enroll-"));
  const keys = await hsm.open();
  const config = testConfig({ revocationPort: -1, ...over });
  const t = await makeTestCa(ts.store, keys, config);
  const rootPem = t.init.root.certPem;
  writeFileSync(join(dir, "root.pem"), rootPem);
  const server = await createCaServer(config, { ca: t.ca, store: ts.store, logger: quietLogger() });
  const { url } = await server.listen();
  const call = (method: string, path: string, opts: CallOptions = {}): Promise<Res> => {
    const u = new URL(path, url);
    const payload = opts.raw !== undefined ? Buffer.from(opts.raw) : opts.body !== undefined ? Buffer.from(JSON.stringify(opts.body)) : undefined;
    return new Promise((resolve, reject) => {
      const req = httpsRequest(u, {
        method, ca: rootPem, ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}), agent: false,
        headers: {
          ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
          ...(opts.authorization ? { authorization: opts.authorization } : {}),
          ...(payload ? { "content-type": opts.contentType ?? "application/json", "content-length": String(payload.length) } : {}),
          ...(opts.headers ?? {}),
        },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks);
          resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"] ?? ""), headers: res.headers, body, json: () => JSON.parse(body.toString()) as Record<string, unknown> });
        });
      });
      req.on("error", reject);
      if (payload) req.write(payload);
      req.end();
    });
  };
  return {
    t, ts, hsm, server, base: url, rootPem, dir, call,
    close: async () => {
      await server.close();
      await ts.cleanup();
      await keys.close();
      hsm.cleanup();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const EC = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIG = { name: "ECDSA", hash: "SHA-256" } as const;

export async function ecKeys(): Promise<CryptoKeyPair> {
  return (await crypto.subtle.generateKey(EC, true, ["sign", "verify"])) as CryptoKeyPair;
}

async function pkcs8Pem(k: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await crypto.subtle.exportKey("pkcs8", k), "PRIVATE KEY");
}

export async function spkiPem(k: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await crypto.subtle.exportKey("spki", k), "PUBLIC KEY");
}

export async function csrPem(keys: CryptoKeyPair, cn = "device"): Promise<string> {
  return (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: SIG })).toString("pem");
}

/** A factory CA that signs bootstrap certificates (what an x509CA enrollment group trusts). */
export interface FactoryCa {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
  pem: string;
  issue(cn: string, opts?: { notAfter?: Date }): Promise<{ certPem: string; keyPem: string; keys: CryptoKeyPair; cert: x509.X509Certificate }>;
}

export async function factoryCa(name: string): Promise<FactoryCa> {
  const keys = await ecKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01", name: `CN=${name}`, keys, signingAlgorithm: SIG, notBefore: new Date(Date.now() - 3600e3), notAfter: new Date(Date.now() + 365 * 86400e3),
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  let serial = 1;
  return {
    cert, keys, pem: cert.toString("pem"),
    async issue(cn, opts = {}) {
      const dk = await ecKeys();
      const c = await x509.X509CertificateGenerator.create({
        serialNumber: (++serial).toString(16).padStart(4, "0"), subject: `CN=${cn}`, issuer: cert.subject, publicKey: dk.publicKey, signingKey: keys.privateKey, signingAlgorithm: SIG,
        notBefore: new Date(Date.now() - 3600e3), notAfter: opts.notAfter ?? new Date(Date.now() + 30 * 86400e3),
        extensions: [new x509.BasicConstraintsExtension(false, undefined, true), new x509.ExtendedKeyUsageExtension(["1.3.6.1.5.5.7.3.2"])],
      });
      return { certPem: c.toString("pem"), keyPem: await pkcs8Pem(dk.privateKey), keys: dk, cert: c };
    },
  };
}

/** Run a command without blocking the event loop (the server under test runs in this process). */
export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, encoding: "utf8", timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? Number((err as { code?: unknown }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
