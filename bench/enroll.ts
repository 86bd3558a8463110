import "reflect-metadata";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { Agent, request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import Database from "better-sqlite3";
import * as x509 from "@peculiar/x509";
import { Value } from "@sinclair/typebox/value";
import { createLogger } from "../common/index.js";
import { Pkcs11KeyStore, SOFTHSM_MODULE, createSoftHsmDir, initToken } from "../hsm/index.js";
import type { BenchRow, Benchmark, Progress } from "./types.js";
import { row, skippedRow } from "./types.js";
import { CaConfig, CaStore, CertificateAuthority, EnrollmentStore, createCaServer, initCa, normalizeIndividual, parseImport } from "../ca-service/index.js";

const ROWS = 100_000;

/**
 * Bulk import of 100,000 individual enrollments from CSV on SQLite (parse, validate every SPKI, hash, per-batch
 * transactions of 1,000 with ownership/idempotency checks and one audit entry each) against the floor: the same
 * already-normalised rows inserted into the same table with one raw better-sqlite3 prepared statement in one
 * transaction. A second row measures re-importing the same file (nothing changes).
 */
export const enrollBenchmark: Benchmark = {
  id: "enroll-import",
  description: "100k-row enrollment CSV import (SQLite) vs raw better-sqlite3 prepared-statement inserts of the same rows",
  async run(progress) {
    const dir = mkdtempSync(join(tmpdir(), "et-bench-enroll-"));
    try {
      progress.step("generating 100k rows");
      const keys = Array.from({ length: 256 }, () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" }).toString("base64"));
      const lines = ["registrationId,attestation,credential,profile,lifetimeDays,edgeCa,dnsNames,labels,status"];
      for (let i = 0; i < ROWS; i++) lines.push(`bench-${i},publicKey,${keys[i % keys.length] ?? ""},device-identity,,true,,site=plant-1,enabled`);
      const csv = lines.join("\n");

      progress.step("reference: raw prepared-statement transaction");
      const refStore = await CaStore.open({ sqlitePath: join(dir, "ref.db") });
      await refStore.close();
      const normalized = parseImport(csv, "csv").map((r) => normalizeIndividual(r.input));
      const raw = new Database(join(dir, "ref.db"));
      raw.pragma("journal_mode = WAL");
      raw.pragma("synchronous = NORMAL");
      const ins = raw.prepare("INSERT INTO individual_enrollments (registration_id, attestation, credential_sha256, credential, profile, lifetime_days, edge_ca, dns_names, labels, status, line_id, row_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
      const now = new Date().toISOString();
      let t = performance.now();
      raw.transaction(() => {
        for (const n of normalized) ins.run(n.registrationId, n.attestation, n.credentialSha256, n.credential, n.profile, n.lifetimeDays, n.edgeCa ? 1 : 0, JSON.stringify(n.dnsNames), JSON.stringify(n.labels), n.status, null, n.rowHash, now, now);
      })();
      const reference = ROWS / ((performance.now() - t) / 1000);
      raw.close();

      progress.step("edgetrust import (CSV → store)");
      const store = await CaStore.open({ sqlitePath: join(dir, "ca.db") });
      const es = new EnrollmentStore(store);
      t = performance.now();
      const first = await es.importIndividuals(parseImport(csv, "csv"), { actor: "bench", lineId: null });
      const value = ROWS / ((performance.now() - t) / 1000);
      if (first.inserted !== ROWS) throw new Error(`bench import inserted ${first.inserted} of ${ROWS}`);
      progress.step("edgetrust re-import (idempotent)");
      t = performance.now();
      const second = await es.importIndividuals(parseImport(csv, "csv"), { actor: "bench", lineId: null });
      const again = ROWS / ((performance.now() - t) / 1000);
      if (second.unchanged !== ROWS) throw new Error("bench re-import changed rows");
      await store.close();
      return [
        row({
          name: "enrollment import, 100k CSV rows (parse + validate + batched writes + audit)", value, unit: "rows/s",
          reference: { name: "raw better-sqlite3 prepared INSERT, one transaction, pre-normalised rows", value: reference },
          target: 0.1, source: "issue 4 (ca-service/README.md#enrollment)",
        }),
        row({
          name: "enrollment re-import, same 100k rows (nothing written)", value: again, unit: "rows/s",
          reference: { name: "raw better-sqlite3 prepared INSERT, one transaction, pre-normalised rows", value: reference },
          target: 0.1, source: "issue 4 (ca-service/README.md#enrollment)",
        }),
      ];
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

// ---- registrations per second --------------------------------------------------------------------------------

const REG_SOURCE = "issue 4 (ca-service/README.md#enrollment)";
const REG_CONCURRENCY = 8;
const REG_ROUNDS = 2;
const REG_ROUND_SECONDS = 2.5;
/** Devices enrolled per backend: more than the service can register in REG_ROUNDS * REG_ROUND_SECONDS here. */
const REG_POOL = 1500;
/**
 * A registration is one issuance plus the work around it: HTTPS + JSON schema, enrollment lookup, CSR verification
 * (proof of possession) and the enrolled-key check, the idempotent claim, the device record and the stored result —
 * three more transactions with audit entries. We hold it to at least a quarter of the raw issuance rate.
 */
const REG_RATIO_TARGET = 0.25;
const REG_ABSOLUTE_TARGET = 1000;

const quiet = () => createLogger("ca-service", { level: "error", destination: new Writable({ write(_c, _e, cb) { cb(); } }) });

interface Device { id: string; csr: string }

async function devicePool(prefix: string, n: number): Promise<{ devices: Device[]; rows: { registrationId: string; attestation: "publicKey"; credential: string; edgeCa: false }[] }> {
  const devices: Device[] = [];
  const rows: { registrationId: string; attestation: "publicKey"; credential: string; edgeCa: false }[] = [];
  for (let i = 0; i < n; i++) {
    const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
    const id = `${prefix}-${String(i).padStart(5, "0")}`;
    const csr = (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${id}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem");
    devices.push({ id, csr });
    rows.push({ registrationId: id, attestation: "publicKey", credential: Buffer.from(await crypto.subtle.exportKey("spki", keys.publicKey)).toString("base64"), edgeCa: false });
  }
  return { devices, rows };
}

/** Run `worker` from REG_CONCURRENCY loops for `seconds` or until it returns false (pool exhausted). */
async function timedUntil(seconds: number, worker: () => Promise<boolean>): Promise<{ ops: number; ms: number }> {
  const start = performance.now();
  const end = start + seconds * 1000;
  let ops = 0;
  await Promise.all(Array.from({ length: REG_CONCURRENCY }, async () => {
    while (performance.now() < end) {
      if (!(await worker())) return;
      ops++;
    }
  }));
  return { ops, ms: performance.now() - start };
}

/**
 * One backend: a CA on its own SoftHSM token and the given store, served over HTTPS in this process. Measures device
 * registrations (PUT /v1/registrations/{id}, a publicKey enrollment: the CSR signed by the enrolled key is the proof of
 * possession; identity certificate issued and stored, no Edge CA) against CertificateAuthority.issue called directly
 * with the same CA, key store and store, in alternating rounds.
 */
async function measureBackend(progress: Progress, label: string, store: CaStore, pin: string, tokenLabel: string): Promise<{ reg: number; raw: number }> {
  const keys = await Pkcs11KeyStore.open({ module: SOFTHSM_MODULE, tokenLabel, pin, logger: quiet() });
  const config: CaConfig = { ...(Value.Default(CaConfig, {}) as CaConfig), port: 0, revocationPort: -1, rateLimitPerMinute: 1_000_000 };
  const agent = new Agent({ keepAlive: true, maxSockets: REG_CONCURRENCY });
  let server: Awaited<ReturnType<typeof createCaServer>> | undefined;
  try {
    progress.step(`${label}: initialising a CA (SoftHSM issuing key), enrolling ${REG_POOL} devices`);
    const init = await initCa(store, keys, { logger: quiet() });
    const ca = await CertificateAuthority.load(store, keys, { trustDomain: config.trustDomain, publicBaseUrl: config.publicBaseUrl, logger: quiet() });
    server = await createCaServer(config, { ca, store, logger: quiet() });
    const { url } = await server.listen();
    const pool = await devicePool(`reg-${label.toLowerCase()}`, REG_POOL);
    const report = await new EnrollmentStore(store).importIndividuals(pool.rows.map((input, i) => ({ row: i + 1, input })), { actor: "bench", lineId: null });
    if (report.inserted !== REG_POOL) throw new Error(`${label}: enrolled ${report.inserted} of ${REG_POOL}`);
    const raw = await devicePool(`raw-${label.toLowerCase()}`, 1);
    const rawDev = raw.devices[0] as Device;
    await store.upsertEnrollment({ deviceId: rawDev.id, kind: "device", commonName: rawDev.id, dnsNames: [] }, "bench");

    let next = 0;
    const register = (): Promise<boolean> => {
      const d = pool.devices[next++];
      if (!d) return Promise.resolve(false);
      const body = Buffer.from(JSON.stringify({ csr: d.csr }));
      return new Promise<boolean>((resolve, reject) => {
        const req = httpsRequest(`${url}/v1/registrations/${d.id}`, {
          method: "PUT", agent, ca: init.root.certPem,
          headers: { "content-type": "application/json", "content-length": String(body.length), "idempotency-key": `bench-${d.id}` },
        }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => (res.statusCode === 201 ? resolve(true) : reject(new Error(`registration of ${d.id}: HTTP ${res.statusCode} ${Buffer.concat(chunks).toString().slice(0, 300)}`))));
        });
        req.on("error", reject);
        req.end(body);
      });
    };
    const issueRaw = async (): Promise<boolean> => {
      await ca.issue({ csrPem: rawDev.csr, profile: "device-identity", deviceId: rawDev.id }, "bench");
      return true;
    };
    await register();
    await issueRaw();
    progress.step(`${label}: ${REG_ROUNDS} alternating rounds of ${REG_ROUND_SECONDS}s, ${REG_CONCURRENCY} concurrent`);
    const tot = { reg: { ops: 0, ms: 0 }, raw: { ops: 0, ms: 0 } };
    for (let i = 0; i < REG_ROUNDS; i++) {
      const order: ["reg" | "raw", () => Promise<boolean>][] = i % 2 === 0 ? [["reg", register], ["raw", issueRaw]] : [["raw", issueRaw], ["reg", register]];
      for (const [k, f] of order) {
        const r = await timedUntil(REG_ROUND_SECONDS, f);
        tot[k].ops += r.ops;
        tot[k].ms += r.ms;
      }
    }
    const issued = (await store.listCertificates({ limit: 100_000 })).filter((c) => (c.deviceId ?? "").startsWith("reg-")).length;
    if (issued !== tot.reg.ops + 1) throw new Error(`${label}: ${tot.reg.ops + 1} registrations but ${issued} stored certificates`);
    const out = { reg: tot.reg.ops / (tot.reg.ms / 1000), raw: tot.raw.ops / (tot.raw.ms / 1000) };
    progress.step(`${label}: ${out.reg.toFixed(1)} registrations/s (${tot.reg.ops}), raw issuance ${out.raw.toFixed(1)} certs/s (${tot.raw.ops})`);
    return out;
  } finally {
    agent.destroy();
    await server?.close();
    await keys.close();
  }
}

/**
 * Registrations per second over HTTPS on SQLite and on PostgreSQL (when DATABASE_URL is set), each against the raw
 * issuance rate of the same CA in the same run, plus the absolute figure against the issue's 1,000/s target.
 */
export const registrationBenchmark: Benchmark = {
  id: "enroll-register",
  description: "device registrations/s over HTTPS (publicKey enrollment, CSR proof of possession, identity cert issued + stored; SoftHSM issuing key) on SQLite and PostgreSQL vs CertificateAuthority.issue in-process",
  async run(progress) {
    const dir = mkdtempSync(join(tmpdir(), "et-bench-reg-"));
    const hsm = createSoftHsmDir();
    const pin = randomBytes(8).toString("hex");
    const databaseUrl = process.env.DATABASE_URL ?? "";
    const rows: BenchRow[] = [];
    try {
      initToken({ module: SOFTHSM_MODULE, label: "bench-reg-sqlite", soPin: randomBytes(8).toString("hex"), userPin: pin });
      if (databaseUrl) initToken({ module: SOFTHSM_MODULE, label: "bench-reg-pg", soPin: randomBytes(8).toString("hex"), userPin: pin });
      const backends: { label: string; name: string; open?: () => Promise<{ store: CaStore; drop: () => Promise<void> }>; token: string }[] = [
        { label: "SQLite", name: "SQLite", token: "bench-reg-sqlite", open: async () => ({ store: await CaStore.open({ sqlitePath: join(dir, "ca.db") }), drop: async () => undefined }) },
        {
          label: "PG", name: "PostgreSQL", token: "bench-reg-pg",
          ...(databaseUrl ? {
            open: async () => {
              const schema = `et_bench_reg_${process.pid}_${randomBytes(3).toString("hex")}`;
              const store = await CaStore.open({ databaseUrl, schema });
              return { store, drop: () => store.db.script(`DROP SCHEMA IF EXISTS ${schema} CASCADE`) };
            },
          } : {}),
        },
      ];
      for (const b of backends) {
        const name = `device registrations over HTTPS (${b.name}; publicKey enrollment, identity cert issued + stored), ${REG_CONCURRENCY} concurrent`;
        if (!b.open) {
          const reason = "DATABASE_URL is not set (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)";
          progress.step(`${b.name}: skipped — ${reason}`);
          rows.push(skippedRow({ name, unit: "registrations/s", reference: "CertificateAuthority.issue in-process, same CA/key store/store", target: REG_RATIO_TARGET, source: REG_SOURCE, reason }));
          rows.push(skippedRow({ name: `${name}, absolute`, unit: "registrations/s", reference: "target", target: 1, source: REG_SOURCE, reason }));
          continue;
        }
        const { store, drop } = await b.open();
        try {
          const m = await measureBackend(progress, b.label, store, pin, b.token);
          rows.push(row({ name, value: m.reg, unit: "registrations/s", reference: { name: `CertificateAuthority.issue in-process, same CA/key store/${b.name}, ${REG_CONCURRENCY} concurrent`, value: m.raw }, target: REG_RATIO_TARGET, source: REG_SOURCE }));
          rows.push(row({ name: `${name}, absolute`, value: m.reg, unit: "registrations/s", reference: { name: "target (issue 4: >= 1,000/s; Azure DPS quotes 1,000/min per unit)", value: REG_ABSOLUTE_TARGET }, target: 1, source: REG_SOURCE }));
        } finally {
          await drop().catch(() => undefined);
          await store.close();
        }
      }
      return rows;
    } finally {
      hsm.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
