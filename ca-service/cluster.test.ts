import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Agent, request as httpsRequest } from "node:https";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { CaStore } from "./store.js";
import { SqliteDb } from "./db.js";
import { initCa } from "./init.js";
import { runCli } from "../test/fixtures/cli.js";
import { DATABASE_URL, PG_SKIP_REASON, announcePgSkip, pgStore, quietLogger, softHsm, startCaServe, TEST_PIN, uniqueSchema, type CaServe, type SoftHsm } from "./test-helpers.js";

/**
 * `ca serve --workers 2` as real processes (the CLI test entry, SoftHSM, SQLite or PostgreSQL): requests spread over
 * both workers, one audit chain, no duplicate serial, a revocation made through one worker in the CRL every worker
 * serves with one CRL-number sequence, /metrics aggregated, one rate limit for the service, a worker killed with
 * SIGKILL replaced while the service goes on, SIGTERM stopping everything with exit 0. Started from the CLI bundle
 * (startCaServe): a start or stop that does not complete fails naming the step, with the service's stderr.
 */
const WORKERS = 2;
const DEVICES = 16;
const ISSUANCES = 160;

interface Reply { status: number; instance: string; body: Buffer; json: Record<string, unknown> }

function call(url: string, opts: { agent: Agent | false; ca: string; method?: string; token?: string; body?: unknown }): Promise<Reply> {
  const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
  const headers: Record<string, string> = {};
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (payload) { headers["content-type"] = "application/json"; headers["content-length"] = String(payload.length); }
  const doRequest = url.startsWith("https:") ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = doRequest(url, { method: opts.method ?? "GET", headers, agent: opts.agent, ...(url.startsWith("https:") ? { ca: opts.ca } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        let json: Record<string, unknown> = {};
        if (String(res.headers["content-type"] ?? "").includes("json")) json = JSON.parse(body.toString() || "{}") as Record<string, unknown>;
        resolve({ status: res.statusCode ?? 0, instance: String(res.headers["x-edgetrust-instance"] ?? ""), body, json });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    // A connection handed to a worker the moment it was killed is lost with it: fail it, the caller retries.
    req.setTimeout(20_000, () => req.destroy(new Error("no answer in 20 s")));
    req.end(payload);
  });
}

async function csrFor(cn: string): Promise<string> {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
  return (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } })).toString("pem");
}

const pidOf = (instance: string): number => Number(/:(\d+)$/.exec(instance)?.[1] ?? NaN);
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

interface Service extends CaServe {
  url: string;
  revocationUrl: string;
}

/** `ca serve --workers N` from the CLI bundle; its start, requests (20 s) and stop are bounded, failures carry its stderr. */
async function startService(cfg: string, env: NodeJS.ProcessEnv, workers = WORKERS): Promise<Service> {
  const s = startCaServe(["-c", cfg, "--workers", String(workers)], { ...process.env, ...env });
  const line = await s.started;
  expect(line.workers).toBe(workers);
  return { ...s, url: line.listening, revocationUrl: line.revocation ?? "" };
}

/** Fetch `path` on new connections until every expected worker has answered at least once (round-robin accept). */
async function fromEveryWorker(base: string, path: string, ca: string, expected: number): Promise<Map<string, Reply>> {
  const seen = new Map<string, Reply>();
  for (let i = 0; i < 40 && seen.size < expected; i++) {
    const r = await call(`${base}${path}`, { agent: false, ca });
    seen.set(r.instance, r);
  }
  return seen;
}

function crlNumberOf(der: Buffer): { number: number; serials: string[] } {
  const crl = new x509.X509Crl(new Uint8Array(der));
  const ext = crl.getExtension("2.5.29.20");
  // CRLNumber ::= INTEGER: the extension value is one small DER INTEGER here (tag, length, big-endian value).
  const v = new Uint8Array(ext?.value ?? new ArrayBuffer(0));
  let n = 0;
  for (let i = 2; i < v.length; i++) n = n * 256 + (v[i] ?? 0);
  return { number: n, serials: crl.entries.map((e) => e.serialNumber.replace(/^0+/, "").toLowerCase()) };
}

function suite(dialect: "sqlite" | "postgres") {
  let hsm: SoftHsm;
  let dir: string;
  let store: CaStore;
  let cleanupStore: () => Promise<void> = async () => undefined;
  let rootPem: string;
  let token: string;
  let cfg: string;
  let env: NodeJS.ProcessEnv;
  let svc: Service;

  beforeAll(async () => {
    hsm = softHsm(`et-cl-${dialect}`);
    dir = mkdtempSync(join(tmpdir(), `et-serve-cluster-${dialect}-`));
    let dbLines: string[];
    if (dialect === "sqlite") {
      const path = join(dir, "ca.db");
      store = await CaStore.fromDb(new SqliteDb(path));
      cleanupStore = () => store.close();
      dbLines = [`  sqlitePath: ${path}`];
    } else {
      const schema = uniqueSchema("et_cluster");
      const ts = await pgStore(schema);
      store = ts.store;
      cleanupStore = ts.cleanup;
      dbLines = [`  databaseUrl: ${DATABASE_URL}`, `  databaseSchema: ${schema}`];
    }
    const keys = await hsm.open();
    const init = await initCa(store, keys, { logger: quietLogger() });
    await keys.close();
    rootPem = init.root.certPem;
    token = init.adminToken;
    cfg = join(dir, "edgetrust.yaml");
    writeFileSync(cfg, [
      "log:", "  level: warn",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: 0", ...dbLines,
      "  trustDomain: cluster.edgetrust", "  rateLimitPerMinute: 1000000", "",
    ].join("\n"));
    env = { SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN };
    svc = await startService(cfg, env);
  }, 120_000);

  afterAll(async () => {
    if (svc?.proc.exitCode === null) svc.proc.kill("SIGKILL");
    await cleanupStore();
    hsm?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const serials: string[] = [];
  let workerInstances: string[] = [];

  it(`${ISSUANCES} concurrent issuances spread over ${WORKERS} workers: no duplicate serial, all stored, one audit chain`, async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 8, ca: rootPem });
    try {
      const devices = Array.from({ length: DEVICES }, (_, i) => `cl-${dialect}-${i}`);
      const enrolled = await Promise.all(devices.map((d) => call(`${svc.url}/v1/admin/enrollments/${d}`, { agent, ca: rootPem, method: "PUT", token, body: { dnsNames: [] } })));
      expect(enrolled.filter((r) => r.status !== 200).map((r) => r.json)).toEqual([]);
      const csrs = await Promise.all(devices.map((d) => csrFor(d)));
      const issued = await Promise.all(Array.from({ length: ISSUANCES }, (_, n) =>
        call(`${svc.url}/v1/certificates`, { agent, ca: rootPem, method: "POST", token, body: { csr: csrs[n % DEVICES], profile: "device-identity", deviceId: devices[n % DEVICES] } })));
      expect(issued.filter((r) => r.status !== 201).map((r) => r.json).slice(0, 3)).toEqual([]);
      workerInstances = [...new Set(issued.map((r) => r.instance))].sort();
      expect(workerInstances.length).toBe(WORKERS);
      for (const i of workerInstances) expect(alive(pidOf(i))).toBe(true);
      expect(new Set(workerInstances.map(pidOf)).has(svc.proc.pid ?? -1)).toBe(false);
      serials.push(...issued.map((r) => String(r.json.serial)));
      expect(new Set(serials).size).toBe(ISSUANCES);
    } finally {
      agent.destroy();
    }
    const stored = await store.db.query<{ serial: string }>("SELECT serial FROM certificates WHERE profile = 'device-identity'");
    expect(stored.map((r) => r.serial).sort()).toEqual([...serials].sort());
    // The listener's TLS certificate is issued once by the primary, not once per worker.
    expect(await store.db.query("SELECT serial FROM certificates WHERE profile = 'ca-server'")).toHaveLength(1);
    const v = await store.verifyAudit();
    expect(v.ok).toBe(true);
    const issues = await store.db.query<{ n: number | string }>("SELECT count(*) AS n FROM audit_log WHERE action = 'cert.issue'");
    expect(Number(issues[0]?.n)).toBe(ISSUANCES);
  }, 240_000);

  it("a revocation made through one worker is in the CRL every worker serves, with one CRL-number sequence", async () => {
    const issuer = (await store.listCas("issuing"))[0]?.id ?? "";
    const numbers: number[] = [];
    for (const serial of serials.slice(0, 2)) {
      const r = await call(`${svc.url}/v1/certificates/${serial}/revoke`, { agent: false, ca: rootPem, method: "POST", token, body: { reason: "keyCompromise" } });
      expect(r.status).toBe(200);
      for (const base of [svc.url, svc.revocationUrl]) {
        const seen = await fromEveryWorker(base, `/v1/crl/${issuer}.crl`, rootPem, WORKERS);
        expect([...seen.keys()].sort()).toEqual(workerInstances);
        const crls = [...seen.values()].map((x) => crlNumberOf(x.body));
        for (const c of crls) expect(c.serials).toContain(serial);
        expect(new Set(crls.map((c) => c.number)).size).toBe(1);
        numbers.push(crls[0]?.number ?? -1);
      }
    }
    // Two revocations, each one CRL for the whole service: the number advanced by exactly one, the same on both ports.
    expect(numbers[0]).toBe(numbers[1]);
    expect(numbers[2]).toBe((numbers[0] ?? 0) + 1);
    expect(numbers[3]).toBe(numbers[2]);
  }, 120_000);

  it("/metrics is the whole service's (every worker's counters added up), whichever worker answers", async () => {
    const seen = await fromEveryWorker(svc.url, "/metrics", rootPem, WORKERS);
    expect(seen.size).toBe(WORKERS);
    for (const r of seen.values()) {
      const text = r.body.toString();
      const issued = [...text.matchAll(/^edgetrust_ca_certificates_issued_total\{[^}]*profile="device-identity"[^}]*\} (\d+)/gm)].reduce((a, m) => a + Number(m[1]), 0);
      expect(issued).toBe(ISSUANCES);
      expect(text).toMatch(/^edgetrust_ca_workers\{state="running"\} 2$/m);
    }
  }, 60_000);

  it(`a rollover made by the CLI reaches every worker (${dialect === "postgres" ? "NOTIFY on each worker's LISTEN connection" : "each worker's poll"})`, async () => {
    const r = await runCli(["ca", "rollover", "-c", cfg, "--json"], env, 90_000);
    expect(r.code, r.stderr).toBe(0);
    const out = r.stdout;
    const newId = (JSON.parse(out) as { id: string }).id;
    const current = new Map<string, string>();
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && !workerInstances.every((w) => current.get(w) === newId)) {
      const r = await call(`${svc.url}/v1/cas`, { agent: false, ca: rootPem });
      const cur = (r.json.cas as { id: string; current: boolean }[]).find((c) => c.current)?.id ?? "";
      current.set(r.instance, cur);
      await new Promise((res) => setTimeout(res, 200));
    }
    expect(workerInstances.map((w) => current.get(w))).toEqual(workerInstances.map(() => newId));
  }, 120_000);

  it("a worker killed with SIGKILL is replaced and logged; the service goes on issuing", async () => {
    const victim = pidOf(workerInstances[0] ?? "");
    process.kill(victim, "SIGKILL");
    const csr = await csrFor("after-kill");
    const device = `cl-${dialect}-0`;
    // Connections accepted after the kill go to live workers; keep issuing until the replacement answers too.
    const after = new Set<string>();
    let ok = 0;
    // A replacement needs a few seconds to load (longer on a busy machine); give it up to 100 s.
    const deadline = Date.now() + 100_000;
    while (Date.now() < deadline && !(after.size >= WORKERS && ok >= 10)) {
      const r = await call(`${svc.url}/v1/certificates`, { agent: false, ca: rootPem, method: "POST", token, body: { csr, profile: "device-identity", deviceId: device } })
        .catch((e: unknown) => ({ status: 0, instance: "", body: Buffer.alloc(0), json: { error: String(e) } }));
      if (r.status === 201) { ok++; after.add(r.instance); }
      else process.stderr.write(`cluster.test: after the kill: ${r.status} ${JSON.stringify(r.json).slice(0, 200)}\n`);
      await new Promise((res) => setTimeout(res, ok >= 10 ? 500 : 50));
    }
    process.stderr.write(`cluster.test: after the kill ${ok} issued by ${[...after].join(", ")}\n`);
    expect(ok).toBeGreaterThanOrEqual(10);
    expect(after.has(workerInstances[0] ?? "")).toBe(false);
    expect(after.size).toBe(WORKERS);
    expect(alive(victim)).toBe(false);
    expect(svc.stderr()).toContain("ca serve worker died; starting a replacement");
    expect(svc.stderr()).toMatch(/"signal":"SIGKILL"/);
    workerInstances = [...after];
    expect((await store.verifyAudit()).ok).toBe(true);
  }, 150_000);

  it("SIGTERM stops the primary and every worker gracefully (exit 0)", async () => {
    expect(await svc.stop()).toBe(0);
    for (const i of workerInstances) expect(alive(pidOf(i))).toBe(false);
    expect((await store.verifyAudit()).ok).toBe(true);
  }, 60_000);
}

describe("a worker's store: opened without migrating", () => {
  it("refuses a store its primary did not migrate, opens one it did, and changes nothing", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-serve-cluster-migrate-"));
    try {
      const path = join(dir, "ca.db");
      await expect(CaStore.open({ sqlitePath: path, migrate: false })).rejects.toMatchObject({ code: "CA_STORE_REFUSED" });
      const migrated = await CaStore.open({ sqlitePath: path });
      const versions = await migrated.db.query("SELECT version, applied_at FROM schema_migrations ORDER BY version");
      await migrated.close();
      const worker = await CaStore.open({ sqlitePath: path, migrate: false });
      expect(await worker.db.query("SELECT version, applied_at FROM schema_migrations ORDER BY version")).toEqual(versions);
      await worker.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("ca serve --workers 2 on SQLite", () => {
  suite("sqlite");
});

describe("ca serve --workers 2: one rate limit for the service, not one per worker (SQLite: counted in the primary)", () => {
  const LIMIT = 12;
  let hsm: SoftHsm;
  let dir: string;
  let svc: Service | undefined;
  let rootPem = "";

  beforeAll(async () => {
    hsm = softHsm("et-cl-rl");
    dir = mkdtempSync(join(tmpdir(), "et-serve-cluster-rl-"));
    const path = join(dir, "ca.db");
    const store = await CaStore.fromDb(new SqliteDb(path));
    const keys = await hsm.open();
    rootPem = (await initCa(store, keys, { logger: quietLogger() })).root.certPem;
    await keys.close();
    await store.close();
    const cfg = join(dir, "edgetrust.yaml");
    writeFileSync(cfg, [
      "log:", "  level: warn",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", `  sqlitePath: ${path}`, `  rateLimitPerMinute: ${LIMIT}`, "",
    ].join("\n"));
    svc = await startService(cfg, { SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN });
  }, 120_000);

  afterAll(() => {
    if (svc?.proc.exitCode === null) svc.proc.kill("SIGKILL");
    hsm?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it(`${LIMIT} per minute per client is granted ${LIMIT} times across both workers`, async () => {
    const s = svc as Service;
    // The window is a fixed minute: start well inside one so that all requests count into the same window.
    const intoMinute = Date.now() % 60_000;
    if (intoMinute > 40_000) await new Promise((r) => setTimeout(r, 60_500 - intoMinute));
    const replies: Reply[] = [];
    for (let i = 0; i < 2 * LIMIT; i++) replies.push(await call(`${s.url}/healthz`, { agent: false, ca: rootPem }));
    const granted = replies.filter((r) => r.status === 200);
    expect(granted).toHaveLength(LIMIT);
    expect(replies.filter((r) => r.status === 429)).toHaveLength(LIMIT);
    // Both workers granted some: with per-worker counters each would have granted LIMIT on its own.
    expect(new Set(granted.map((r) => r.instance)).size).toBe(WORKERS);
    expect(await s.stop()).toBe(0);
  }, 120_000);
});

announcePgSkip("ca-service/cluster.test.ts");
describe.skipIf(!DATABASE_URL)(`ca serve --workers 2 on PostgreSQL${DATABASE_URL ? "" : ` (skipped: ${PG_SKIP_REASON})`}`, () => {
  suite("postgres");
});
