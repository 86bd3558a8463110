import { execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Writable } from "node:stream";
import pkcs11js from "pkcs11js";
import * as x509 from "@peculiar/x509";
import { Value } from "@sinclair/typebox/value";
import { createLogger } from "../common/index.js";
import { HsmConfig, Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken, openKeyStore, type KeyStore } from "../hsm/index.js";
import { CaConfig, CaStore, CertificateAuthority, PostgresDb, createCaServer, initCa } from "../ca-service/index.js";
import { row, type Benchmark, type BenchRow, type Progress } from "./types.js";

const execFileAsync = promisify(execFile);
const SOURCE = "issue 3 (ca-service)";
/** Keep-alive HTTPS connections the load generator keeps busy (one request in flight on each). */
const CONNECTIONS = 32;
/** Distinct CSRs (keys) the load generator cycles through. */
const CSRS = 512;
const WARMUP_SECONDS = 1;
const MEASURE_SECONDS = 4;
/** Issue 3: stored issuance over HTTPS ≥ 0.25× openssl's single-core ECDSA P-256 sign rate (SQLite). */
const TARGET_VS_OPENSSL = 0.25;
/** Issue 3: with the issuing key in SoftHSM, ≥ 0.5× SoftHSM's raw signing rate. */
const TARGET_VS_SOFTHSM = 0.5;

const quiet = () => createLogger("ca-service", { level: "error", destination: new Writable({ write(_c, _e, cb) { cb(); } }) });

/**
 * The load generator runs in its own process so its TLS and JSON work does not share the server's event loop: it opens
 * CONNECTIONS keep-alive connections, warms up, then counts 201s for a fixed time. Plain ESM (no TypeScript loader).
 */
const LOAD_SCRIPT = `
import { Agent, request } from "node:https";
let input = "";
for await (const c of process.stdin) input += c;
const o = JSON.parse(input);
const agent = new Agent({ keepAlive: true, maxSockets: o.connections, ca: o.ca });
const bodies = o.bodies.map((b) => Buffer.from(b));
let next = 0;
const one = () => new Promise((resolve, reject) => {
  const body = bodies[next++ % bodies.length];
  const headers = { authorization: "Bearer " + o.token, "content-type": "application/json", "content-length": String(body.length) };
  const req = request(o.url, { method: "POST", agent, headers }, (res) => {
    res.resume();
    res.on("end", () => (res.statusCode === 201 ? resolve() : reject(new Error("issuance failed: HTTP " + res.statusCode))));
  });
  req.on("error", reject);
  req.end(body);
});
const run = async (seconds) => {
  const t0 = performance.now(), end = t0 + seconds * 1000;
  let ops = 0;
  await Promise.all(Array.from({ length: o.connections }, async () => { while (performance.now() < end) { await one(); ops++; } }));
  return { ops, ms: performance.now() - t0 };
};
await run(o.warmup);
const r = await run(o.seconds);
agent.destroy();
process.stdout.write(JSON.stringify(r));
`;

interface LoadResult { ops: number; ms: number }

async function loadFromChild(opts: { url: string; token: string; ca: string; bodies: string[] }): Promise<number> {
  const child = spawn(process.execPath, ["--input-type=module", "-e", LOAD_SCRIPT], { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (c: Buffer) => { out += c.toString(); });
  child.stderr.on("data", (c: Buffer) => { err += c.toString(); });
  const done = new Promise<number | null>((resolve) => child.on("close", resolve));
  child.stdin.end(JSON.stringify({ ...opts, connections: CONNECTIONS, warmup: WARMUP_SECONDS, seconds: MEASURE_SECONDS }));
  const code = await done;
  if (code !== 0) throw new Error(`load generator exited ${code}: ${err.slice(-500)}`);
  const r = JSON.parse(out) as LoadResult;
  return r.ops / (r.ms / 1000);
}

/** `openssl speed -seconds N ecdsap256`: the single-core "sign/s" column. */
function opensslSignRate(seconds: number): number {
  const out = execFileSync("openssl", ["speed", "-seconds", String(seconds), "ecdsap256"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const m = /nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)\s+[\d.]+/.exec(out);
  if (!m) throw new Error(`could not read openssl speed output: ${out.slice(-200)}`);
  return Number(m[1]);
}

/** SoftHSM's own rate on a key: pkcs11js C_SignInit + C_SignAsync on `sessions` parallel sessions (as bench/hsm.ts). */
async function softHsmRawRate(keys: Pkcs11KeyStore, label: string, sessions: number, seconds: number): Promise<number> {
  const handle = await keys.privateKeyHandle({ label });
  const digest = randomBytes(32);
  return keys.withSession(async (p11) => {
    const open = Array.from({ length: sessions }, () => p11.C_OpenSession(keys.slot, pkcs11js.CKF_SERIAL_SESSION));
    try {
      const t0 = performance.now();
      const end = t0 + seconds * 1000;
      let ops = 0;
      await Promise.all(open.map(async (s) => {
        while (performance.now() < end) {
          p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, handle);
          await p11.C_SignAsync(s, digest, Buffer.alloc(64));
          ops++;
        }
      }));
      return ops / ((performance.now() - t0) / 1000);
    } finally {
      for (const s of open) p11.C_CloseSession(s);
    }
  });
}

interface Setup { store: CaStore; keys: KeyStore; cleanup(): Promise<void> }

/** A CA on `store`/`keys`, its HTTPS service, one enrolled device; returns issuances per second from the child. */
async function serviceRate(setup: Setup, csrs: string[]): Promise<{ rate: number; issuingKeyLabel: string }> {
  const { store, keys } = setup;
  const config: CaConfig = { ...(Value.Default(CaConfig, {}) as CaConfig), port: 0, revocationPort: -1, rateLimitPerMinute: 1_000_000 };
  const init = await initCa(store, keys, { logger: quiet() });
  const ca = await CertificateAuthority.load(store, keys, { trustDomain: config.trustDomain, publicBaseUrl: config.publicBaseUrl, logger: quiet() });
  const server = await createCaServer(config, { ca, store, logger: quiet() });
  try {
    const { url } = await server.listen();
    await store.upsertEnrollment({ deviceId: "bench-dev", kind: "device", commonName: "bench-dev", dnsNames: [] }, "bench");
    const bodies = csrs.map((csr) => JSON.stringify({ csr, profile: "device-identity", deviceId: "bench-dev" }));
    const rate = await loadFromChild({ url: `${url}/v1/certificates`, token: init.adminToken, ca: init.root.certPem, bodies });
    return { rate, issuingKeyLabel: init.issuing.keyLabel };
  } finally {
    await server.close();
  }
}

export const caBenchmark: Benchmark = {
  id: "ca",
  description: "stored certificate issuance over HTTPS (SQLite, PostgreSQL; software key, SoftHSM key) vs openssl speed ecdsap256 and SoftHSM's raw signing rate",
  async run(progress: Progress): Promise<BenchRow[]> {
    const dir = mkdtempSync(join(tmpdir(), "et-bench-ca-"));
    const hsmDir = createSoftHsmDir();
    const rows: BenchRow[] = [];
    try {
      execFileSync("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "dev.key"], { cwd: dir, stdio: "ignore" });
      execFileSync("openssl", ["req", "-new", "-key", "dev.key", "-subj", "/CN=bench-dev", "-out", "dev.csr"], { cwd: dir, stdio: "ignore" });
      // Every request carries another device key, as in real issuance (more keys than pki/'s SPKI cache holds).
      progress.step(`${CSRS} P-256 CSRs (one key each)`);
      const csrs = await Promise.all(Array.from({ length: CSRS }, async () => {
        const kp = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
        const req = await x509.Pkcs10CertificateRequestGenerator.create({ name: "CN=bench-dev", keys: kp, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
        return req.toString("pem");
      }));
      const load = `${CONNECTIONS} keep-alive connections from another process, ${MEASURE_SECONDS}s`;

      progress.step("openssl speed -seconds 2 ecdsap256 (single-core sign/s)");
      const ossl = opensslSignRate(2);
      const opensslRef = { name: "openssl speed ecdsap256, 1 core (sign/s)", value: ossl };

      // 1. SQLite, issuing key in the software key store (Node crypto): the service's own ceiling.
      progress.step(`HTTPS issuance, SQLite, software issuing key (${load})`);
      {
        const sw = await openKeyStore({ ...(Value.Default(HsmConfig, {}) as HsmConfig), backend: "software", softwareDir: join(dir, "keys") },
          { passphrase: randomBytes(12).toString("hex"), logger: quiet() });
        const store = await CaStore.open({ sqlitePath: join(dir, "sw.db") });
        try {
          const { rate } = await serviceRate({ store, keys: sw, cleanup: async () => undefined }, csrs);
          rows.push(row({ name: "issuance over HTTPS, SQLite, software issuing key (certs/s vs sign/s)", value: rate, unit: "certs/s", reference: opensslRef, target: TARGET_VS_OPENSSL, source: SOURCE }));
        } finally {
          await store.close();
          await sw.close();
        }
      }

      // 2. SQLite, issuing key in SoftHSM; the token's raw rate on the same key right after.
      progress.step(`HTTPS issuance, SQLite, issuing key in SoftHSM (${load}); then raw C_Sign on that key`);
      {
        const pin = randomBytes(8).toString("hex");
        initToken({ module: SOFTHSM_MODULE, label: "bench-ca", soPin: randomBytes(8).toString("hex"), userPin: pin });
        const hsm = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel: "bench-ca", pin, logger: quiet() });
        const store = await CaStore.open({ sqlitePath: join(dir, "hsm.db") });
        try {
          const { rate, issuingKeyLabel } = await serviceRate({ store, keys: hsm, cleanup: async () => undefined }, csrs);
          const sessions = (Value.Default(HsmConfig, {}) as HsmConfig).sessionPoolSize;
          const raw = await softHsmRawRate(hsm, issuingKeyLabel, sessions, 2);
          rows.push(row({ name: "issuance over HTTPS, SQLite, issuing key in SoftHSM", value: rate, unit: "certs/s", reference: { name: `SoftHSM raw C_Sign on the issuing key, ${sessions} sessions (sig/s)`, value: raw }, target: TARGET_VS_SOFTHSM, source: SOURCE }));
          rows.push(row({ name: "(context) issuance over HTTPS, SQLite, issuing key in SoftHSM", value: rate, unit: "certs/s", reference: opensslRef, target: TARGET_VS_OPENSSL, source: SOURCE }));
        } finally {
          await store.close();
          await hsm.close();
        }
      }

      // 3. PostgreSQL (software key, as row 1), when a server is configured.
      const pgUrl = process.env.DATABASE_URL ?? "";
      if (/^postgres(ql)?:\/\//.test(pgUrl)) {
        progress.step(`HTTPS issuance, PostgreSQL, software issuing key (${load})`);
        const sw = await openKeyStore({ ...(Value.Default(HsmConfig, {}) as HsmConfig), backend: "software", softwareDir: join(dir, "keys-pg") },
          { passphrase: randomBytes(12).toString("hex"), logger: quiet() });
        const db = new PostgresDb(pgUrl, `et_bench_ca_${process.pid}_${randomBytes(3).toString("hex")}`);
        try {
          await db.init();
          const store = await CaStore.fromDb(db);
          const { rate } = await serviceRate({ store, keys: sw, cleanup: async () => undefined }, csrs);
          rows.push(row({ name: "issuance over HTTPS, PostgreSQL, software issuing key", value: rate, unit: "certs/s", reference: opensslRef, target: TARGET_VS_OPENSSL, source: SOURCE }));
        } finally {
          await db.dropSchema().catch(() => undefined);
          await db.close();
          await sw.close();
        }
      } else {
        progress.step("PostgreSQL skipped: DATABASE_URL is not set (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)");
        rows.push({ name: "issuance over HTTPS, PostgreSQL", value: 0, unit: "certs/s", reference: opensslRef, ratio: 0, target: TARGET_VS_OPENSSL, met: false, source: SOURCE, skipped: "DATABASE_URL is not set (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)" });
      }

      // Context kept from the first version of this bench: a shell loop around `openssl x509 -req` (4 processes).
      progress.step("(context) openssl x509 -req signing the same CSR, 4 concurrent processes, 3s");
      execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ref-ca.key", "-subj", "/CN=ref CA", "-days", "30", "-out", "ref-ca.pem"], { cwd: dir, stdio: "ignore" });
      writeFileSync(join(dir, "ext.cnf"), ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth", "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid", ""].join("\n"));
      const t0 = performance.now();
      let n = 0;
      await Promise.all(Array.from({ length: 4 }, async () => {
        while (performance.now() - t0 < 3000) {
          await execFileAsync("openssl", ["x509", "-req", "-in", "dev.csr", "-CA", "ref-ca.pem", "-CAkey", "ref-ca.key", "-set_serial", `0x1${randomBytes(15).toString("hex")}`, "-days", "365", "-sha256", "-extfile", "ext.cnf", "-out", "/dev/null"], { cwd: dir });
          n++;
        }
      }));
      const x509Rate = n / ((performance.now() - t0) / 1000);
      const sqliteHsm = rows.find((r) => r.name.startsWith("(context) issuance over HTTPS, SQLite, issuing key in SoftHSM"));
      if (sqliteHsm) rows.push(row({ name: "(context) issuance over HTTPS, SQLite, SoftHSM key", value: sqliteHsm.value, unit: "certs/s", reference: { name: "openssl x509 -req per certificate, 4 processes", value: x509Rate }, target: 1, source: SOURCE }));
      return rows;
    } finally {
      hsmDir.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
