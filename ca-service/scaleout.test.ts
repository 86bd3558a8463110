import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Agent, request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { PostgresDb } from "./db.js";
import { initCa } from "./init.js";
import { DATABASE_URL, PG_SKIP_REASON, announcePgSkip, pgStore, startCaServe, quietLogger, softHsm, TEST_PIN, uniqueSchema, type CaServe, type SoftHsm, type TestStore } from "./test-helpers.js";

/** Issue 3: two `ca serve` processes on one PostgreSQL, 10,000 concurrent issuances. */
const PROCESSES = 2;
const ISSUANCES = 10_000;
/** Devices (one key and CSR each); every device gets ISSUANCES / DEVICES certificates, spread over the processes. */
const DEVICES = 500;
/** Every REVOKE_EVERY-th certificate is revoked (through the other process) as soon as its issuance returns. */
const REVOKE_EVERY = 40;
/** Keep-alive TLS connections per process: enough to keep both servers busy, few enough to keep handshakes cheap. */
const SOCKETS_PER_PROCESS = 32;

interface Reply { status: number; json: Record<string, unknown> }

function call(agent: Agent, method: string, url: string, token: string, body: unknown): Promise<Reply> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method, agent, headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "content-length": String(payload.length) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString() || "{}") as Record<string, unknown> }));
      res.on("error", reject);
    });
    req.on("error", reject);
    // An answer that never comes (a connection lost in a worker hand-off) fails the run naming the request, not at 600 s.
    req.setTimeout(60_000, () => req.destroy(new Error(`${method} ${url}: no answer within 60 s`)));
    req.end(payload);
  });
}

async function csrFor(cn: string): Promise<string> {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
  return csr.toString("pem");
}

announcePgSkip("ca-service/scaleout.test.ts");
describe.skipIf(!DATABASE_URL)(`scale-out: ${PROCESSES} \`ca serve\` processes on one PostgreSQL${DATABASE_URL ? "" : ` (skipped: ${PG_SKIP_REASON})`}`, () => {
  let hsm: SoftHsm;
  let ts: TestStore;
  let sql: PostgresDb;
  let dir: string;
  let token: string;
  const procs: CaServe[] = [];
  const urls: string[] = [];
  const agents: Agent[] = [];
  /** Audit actions before the test traffic (CA creation, first token). */
  let before: Record<string, number> = {};

  async function auditCounts(): Promise<Record<string, number>> {
    const rows = await sql.query<{ action: string; n: string }>("SELECT action, count(*) AS n FROM audit_log GROUP BY action");
    return Object.fromEntries(rows.map((r) => [r.action, Number(r.n)]));
  }

  beforeAll(async () => {
    hsm = softHsm("et-ca-scale");
    const schema = uniqueSchema("et_scale");
    ts = await pgStore(schema);
    sql = new PostgresDb(DATABASE_URL, schema);
    const keys = await hsm.open();
    const init = await initCa(ts.store, keys, { logger: quietLogger() });
    await keys.close();
    token = init.adminToken;
    before = await auditCounts();
    dir = mkdtempSync(join(tmpdir(), "et-ca-scale-"));
    const cfg = join(dir, "edgetrust.yaml");
    writeFileSync(cfg, [
      "log:", "  level: warn",
      "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
      "ca:", "  host: 127.0.0.1", "  port: 0", "  revocationPort: -1", `  databaseUrl: ${DATABASE_URL}`, `  databaseSchema: ${schema}`,
      "  trustDomain: scale.edgetrust", "  rateLimitPerMinute: 1000000", "",
    ].join("\n"));
    for (let i = 0; i < PROCESSES; i++) {
      const server = startCaServe(["-c", cfg], { ...process.env, SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN });
      procs.push(server);
      urls.push(await server.listening);
      agents.push(new Agent({ keepAlive: true, maxSockets: SOCKETS_PER_PROCESS, ca: init.root.certPem }));
    }
  }, 180_000);

  afterAll(async () => {
    for (const a of agents) a.destroy();
    for (const p of procs) if (p.proc.exitCode === null && p.proc.signalCode === null) p.proc.kill("SIGKILL");
    await sql?.close();
    await ts?.cleanup();
    hsm?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it(`${ISSUANCES} concurrent issuances (and revocations) across ${PROCESSES} processes: no duplicate serial, nothing lost, one audit chain`, async () => {
    const t0 = performance.now();
    const devices = Array.from({ length: DEVICES }, (_, i) => `scale-${i}`);
    const enrolled = await Promise.all(devices.map((d, i) => call(agents[i % PROCESSES] as Agent, "PUT", `${urls[i % PROCESSES]}/v1/admin/enrollments/${d}`, token, { dnsNames: [] })));
    expect(enrolled.filter((r) => r.status !== 200)).toEqual([]);
    const csrs = await Promise.all(devices.map((d) => csrFor(d)));
    const t1 = performance.now();

    // All issuances are started at once (the agents queue them on their keep-alive connections); request n goes to
    // process n % PROCESSES, and every REVOKE_EVERY-th certificate is revoked through the other process the moment
    // it is issued, so revocations (CRL regeneration under its lock) interleave with issuance on the audit chain.
    const toRevoke: string[] = [];
    const revocations: Promise<Reply>[] = [];
    const issued = await Promise.all(Array.from({ length: ISSUANCES }, async (_, n) => {
      const d = n % DEVICES;
      const p = n % PROCESSES;
      const r = await call(agents[p] as Agent, "POST", `${urls[p]}/v1/certificates`, token, { csr: csrs[d], profile: "device-identity", deviceId: devices[d] });
      if (r.status === 201 && n % REVOKE_EVERY === 0) {
        const serial = String(r.json.serial);
        toRevoke.push(serial);
        const q = (p + 1) % PROCESSES;
        revocations.push(call(agents[q] as Agent, "POST", `${urls[q]}/v1/certificates/${serial}/revoke`, token, { reason: "superseded" }));
      }
      return r;
    }));
    const revoked = await Promise.all(revocations);
    const t2 = performance.now();
    process.stderr.write(`scaleout: ${DEVICES} enrollments + CSRs ${((t1 - t0) / 1000).toFixed(1)}s; ${ISSUANCES} issuances + ${toRevoke.length} revocations over ${PROCESSES} processes ${((t2 - t1) / 1000).toFixed(1)}s (${(ISSUANCES / ((t2 - t1) / 1000)).toFixed(0)} certs/s)\n`);

    const failed = issued.filter((r) => r.status !== 201);
    expect(failed.slice(0, 3)).toEqual([]);
    expect(revoked.filter((r) => r.status !== 200).slice(0, 3)).toEqual([]);
    expect(toRevoke).toHaveLength(ISSUANCES / REVOKE_EVERY);
    const serials = issued.map((r) => String(r.json.serial));
    expect(new Set(serials).size).toBe(ISSUANCES);

    // The database: exactly the certificates the clients got, no serial or certificate twice.
    const [counts] = await sql.query<{ n: string; serials: string; fingerprints: string; revoked: string }>(
      "SELECT count(*) AS n, count(DISTINCT serial) AS serials, count(DISTINCT fingerprint_sha256) AS fingerprints, count(*) FILTER (WHERE status = 'revoked') AS revoked FROM certificates WHERE profile = 'device-identity'");
    expect(counts).toEqual({ n: String(ISSUANCES), serials: String(ISSUANCES), fingerprints: String(ISSUANCES), revoked: String(toRevoke.length) });
    expect(await sql.query("SELECT serial, count(*) AS n FROM certificates GROUP BY serial HAVING count(*) > 1")).toEqual([]);
    const stored = new Set((await sql.query<{ serial: string }>("SELECT serial FROM certificates")).map((r) => r.serial));
    expect(serials.filter((s) => !stored.has(s))).toEqual([]);
    const revokedRows = (await sql.query<{ serial: string }>("SELECT serial FROM certificates WHERE status = 'revoked' ORDER BY serial")).map((r) => r.serial);
    expect(revokedRows).toEqual([...toRevoke].sort());

    // One audit chain, verified end to end, with exactly one entry per change.
    const v = await ts.store.verifyAudit();
    expect(v).toMatchObject({ ok: true });
    const added = { "cert.issue.server": PROCESSES, "enrollment.upsert": DEVICES, "cert.issue": ISSUANCES, "cert.revoke": toRevoke.length };
    const expected: Record<string, number> = { ...before };
    for (const [k, n] of Object.entries(added)) expected[k] = (expected[k] ?? 0) + n;
    expect(await auditCounts()).toEqual(expected);
    const total = Object.values(expected).reduce((a, b) => a + b, 0);
    expect(v.entries).toBe(total);
    expect(v.headSeq).toBe(total);

    // The CRL stored last holds every revocation (CRL numbers were taken under a lock).
    const issuer = (await ts.store.listCas("issuing"))[0]?.id ?? "";
    const crl = await ts.store.currentCrl(issuer);
    expect(crl?.crlNumber).toBe(toRevoke.length);
    const parsed = new x509.X509Crl(new Uint8Array(crl?.der ?? []));
    expect(parsed.entries.map((e) => e.serialNumber.replace(/^0+/, "").toLowerCase()).sort()).toEqual([...toRevoke].sort());
  }, 600_000);

  it("SIGTERM shuts every process down gracefully (exit 0)", async () => {
    for (const a of agents) a.destroy();
    const codes = await Promise.all(procs.map((p) => p.stop()));
    expect(codes).toEqual(procs.map(() => 0));
  });
});
