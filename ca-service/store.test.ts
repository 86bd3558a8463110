import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { randomBytes } from "node:crypto";
import { DATABASE_URL, PG_SKIP_REASON, announcePgSkip, pgStore, sqliteStore, type TestStore } from "./test-helpers.js";
import { CaStore, type NewCertificate, sha256Hex } from "./store.js";
import Database from "better-sqlite3";
import { isEdgeTrustError } from "../common/index.js";
import { PostgresDb, SqliteDb } from "./db.js";
import { migrate, schemaVersion, MIGRATIONS } from "./migrations.js";

function fakeCert(issuerId: string, over: Partial<NewCertificate> = {}): NewCertificate {
  const serial = randomBytes(16).toString("hex").replace(/^0+/, "");
  return {
    serial, issuerId, profile: "device-identity", subject: "CN=d1", sans: ["URI:edgetrust://t/devices/d1"], deviceId: "d1",
    spkiSha256: sha256Hex(serial), fingerprintSha256: sha256Hex("fp" + serial), notBefore: new Date().toISOString(),
    notAfter: new Date(Date.now() + 86400e3).toISOString(), certPem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    replacesSerial: null, ...over,
  };
}

async function seedCa(store: CaStore): Promise<string> {
  const id = randomBytes(20).toString("hex");
  await store.addCa({ id, kind: "issuing", name: "Issuing 1", parentId: null, certPem: "pem", keyLabel: "ca-issuing-1", keyAlgorithm: "EC-P256", notBefore: new Date().toISOString(), notAfter: new Date(Date.now() + 1e10).toISOString(), status: "active" }, "test");
  return id;
}

/** Raw SQL an attacker with database access could run; the append-only triggers are dropped first, as they would be. */
async function dropAppendOnly(store: CaStore): Promise<void> {
  if (store.dialect === "sqlite") await store.db.script("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;");
  else await store.db.script("DROP TRIGGER audit_log_no_change ON audit_log");
}

function storeSuite(name: string, make: () => Promise<TestStore>) {
  describe(name, () => {
    let t: TestStore;
    let issuer: string;
    beforeAll(async () => { t = await make(); issuer = await seedCa(t.store); });
    afterAll(async () => { await t?.cleanup(); });

    it("migrations are recorded and idempotent", async () => {
      expect(await schemaVersion(t.store.db)).toBe(Math.max(...MIGRATIONS.map((m) => m.version)));
      expect(await migrate(t.store.db)).toEqual([]);
    });

    it("records issued certificates and refuses a duplicate serial", async () => {
      const c = fakeCert(issuer);
      const rec = await t.store.recordIssued(c, "tester");
      expect(rec.status).toBe("good");
      expect((await t.store.getCertificate(c.serial))?.sans).toEqual(c.sans);
      await expect(t.store.recordIssued({ ...fakeCert(issuer), serial: c.serial }, "tester")).rejects.toSatisfy((e) => isEdgeTrustError(e, "CONFLICT"));
      expect((await t.store.listCertificates({ deviceId: "d1" })).length).toBeGreaterThanOrEqual(1);
    });

    it("revokes by serial with a reason, once; hold can be released", async () => {
      const c = fakeCert(issuer);
      await t.store.recordIssued(c, "tester");
      const { record: r, repeated } = await t.store.revoke(c.serial.toUpperCase(), "keyCompromise", "admin");
      expect(repeated).toBe(false);
      expect(r.status).toBe("revoked");
      expect(r.revocationReason).toBe("keyCompromise");
      // The same revocation again is a repeat: the record as it was, nothing written (no second audit entry).
      const audits = async () => Number((await t.store.db.query<{ n: number | string }>("SELECT COUNT(*) AS n FROM audit_log"))[0]?.n);
      const before = await audits();
      const again = await t.store.revoke(c.serial, "keyCompromise", "admin");
      expect(again).toMatchObject({ repeated: true, record: { status: "revoked", revocationReason: "keyCompromise", revokedAt: r.revokedAt } });
      expect(await audits()).toBe(before);
      await expect(t.store.revoke(c.serial, "superseded", "admin")).rejects.toSatisfy((e) => isEdgeTrustError(e, "CONFLICT"));
      await expect(t.store.revoke("abcdef", "superseded", "admin")).rejects.toSatisfy((e) => isEdgeTrustError(e, "NOT_FOUND"));
      const h = fakeCert(issuer);
      await t.store.recordIssued(h, "tester");
      await t.store.revoke(h.serial, "certificateHold", "admin");
      expect((await t.store.revoke(h.serial, "removeFromCRL", "admin")).record.status).toBe("good");
      expect((await t.store.revokedBy(issuer)).map((x) => x.serial)).toContain(c.serial);
    });

    it("CRL numbers strictly increase", async () => {
      const a = await t.store.nextCrl(issuer, async (n) => ({ der: Buffer.from([n]), thisUpdate: new Date(), nextUpdate: new Date() }));
      const b = await t.store.nextCrl(issuer, async (n) => ({ der: Buffer.from([n]), thisUpdate: new Date(), nextUpdate: new Date() }));
      expect(b.crlNumber).toBe(a.crlNumber + 1);
      expect((await t.store.currentCrl(issuer))?.crlNumber).toBe(b.crlNumber);
    });

    it("tokens: only the hash is stored; revoked tokens stop working", async () => {
      const { id, token } = await t.store.createToken("ops", "auditor", "bootstrap");
      const rows = await t.store.db.query("SELECT * FROM principals WHERE id = ?", [id]);
      expect(JSON.stringify(rows)).not.toContain(token);
      expect((await t.store.principalForToken(token))?.role).toBe("auditor");
      expect(await t.store.principalForToken(token + "x")).toBeUndefined();
      await t.store.revokePrincipal(id, "admin");
      expect(await t.store.principalForToken(token)).toBeUndefined();
    });

    it("enrollment records upsert", async () => {
      await t.store.upsertEnrollment({ deviceId: "dev-9", kind: "device", commonName: "dev-9", dnsNames: ["dev-9.local"] }, "line");
      const e = await t.store.upsertEnrollment({ deviceId: "dev-9", kind: "device", commonName: "dev-9", dnsNames: ["dev-9.lan"] }, "line");
      expect(e.dnsNames).toEqual(["dev-9.lan"]);
    });

    it("the audit log is append-only in the database and the chain verifies", async () => {
      const v = await t.store.verifyAudit();
      expect(v).toMatchObject({ ok: true });
      expect(v.entries).toBeGreaterThan(5);
      await expect(t.store.db.run("UPDATE audit_log SET actor = 'x' WHERE seq = 1")).rejects.toThrow(/append-only/);
      await expect(t.store.db.run("DELETE FROM audit_log WHERE seq = 1")).rejects.toThrow(/append-only/);
    });

    it("concurrent appends keep one linear chain", async () => {
      await Promise.all(Array.from({ length: 40 }, (_, i) => t.store.audit({ actor: "c", action: "test.concurrent", target: String(i) })));
      expect((await t.store.verifyAudit()).ok).toBe(true);
    });

    /** Serials of `serials` visible to ANOTHER connection: only committed rows are (SQLite WAL reader, PG pool). */
    async function committed(serials: string[]): Promise<string[]> {
      const list = serials.map(() => "?").join(", ");
      const sql = `SELECT serial FROM certificates WHERE serial IN (${list})`;
      if (t.store.db instanceof SqliteDb) {
        const other = new Database(t.store.db.path, { readonly: true });
        try {
          return (other.prepare(sql).all(...serials) as { serial: string }[]).map((r) => r.serial);
        } finally {
          other.close();
        }
      }
      return (await t.store.db.query<{ serial: string }>(sql, serials)).map((r) => r.serial);
    }

    it("group commit: concurrent issuances go into one transaction, each answered after its commit, audit entries in order", async () => {
      const before = { ...t.store.issuance.stats };
      const certs = Array.from({ length: 24 }, () => fakeCert(issuer));
      const seenAtAnswer: string[][] = [];
      await Promise.all(certs.map(async (c) => {
        await t.store.recordIssued(c, "tester");
        seenAtAnswer.push(await committed([c.serial]));
      }));
      expect(t.store.issuance.stats.batches - before.batches).toBe(1);
      expect(t.store.issuance.stats.largest).toBeGreaterThanOrEqual(certs.length);
      expect(seenAtAnswer.every((s) => s.length === 1)).toBe(true);
      const tail = (await t.store.listAudit({ afterSeq: 0, limit: 100000 })).slice(-certs.length);
      expect(tail.map((e) => e.target)).toEqual(certs.map((c) => c.serial));
      expect(tail.map((e) => e.seq)).toEqual(tail.map((_, i) => (tail[0]?.seq ?? 0) + i));
      expect((await t.store.verifyAudit()).ok).toBe(true);
    });

    it("the audit chain verifies while certificates are being recorded (head and log read in one snapshot)", async () => {
      let issuing = true;
      let recorded = 0;
      const writer = (async () => {
        while (issuing) {
          await Promise.all(Array.from({ length: 8 }, () => t.store.recordIssued(fakeCert(issuer), "tester")));
          recorded += 8;
        }
      })();
      const results = [];
      try {
        // Until several batches were committed during the checks (each check spans at least one event-loop turn).
        for (let i = 0; i < 2000 && (i < 10 || recorded < 80); i++) {
          // A timer turn lets the group commit's window end, so checks run while its transactions are open.
          await new Promise((r) => setTimeout(r, 0));
          results.push(await t.store.verifyAudit());
        }
      } finally {
        issuing = false;
        await writer;
      }
      expect(recorded).toBeGreaterThanOrEqual(80);
      expect(results.filter((r) => !r.ok)).toEqual([]);
      expect(new Set(results.map((r) => r.headSeq)).size, "the checks saw the chain grow").toBeGreaterThan(1);
    });

    it("group commit: one bad record fails alone with its precise error; its neighbours are committed", async () => {
      const existing = fakeCert(issuer);
      await t.store.recordIssued(existing, "tester");
      const before = { ...t.store.issuance.stats };
      const certs = Array.from({ length: 9 }, () => fakeCert(issuer));
      const dup = { ...fakeCert(issuer), serial: existing.serial };
      certs.splice(4, 0, dup);
      const results = await Promise.allSettled(certs.map((c) => t.store.recordIssued(c, "tester")));
      const failed = results.flatMap((r, i) => (r.status === "rejected" ? [[i, r.reason] as const] : []));
      expect(failed.map(([i]) => i)).toEqual([4]);
      expect(isEdgeTrustError(failed[0]?.[1], "CONFLICT")).toBe(true);
      expect(String((failed[0]?.[1] as Error).message)).toContain(existing.serial);
      expect(t.store.issuance.stats.retriedAlone - before.retriedAlone).toBe(certs.length);
      const good = certs.filter((c) => c !== dup).map((c) => c.serial);
      expect((await committed(good)).sort()).toEqual([...good].sort());
      expect((await t.store.getCertificate(existing.serial))?.fingerprintSha256).toBe(existing.fingerprintSha256);
      const audit = await t.store.listAudit({ afterSeq: 0, limit: 100000 });
      expect(audit.filter((e) => e.target === existing.serial)).toHaveLength(1);
      expect((await t.store.verifyAudit()).ok).toBe(true);
    });

    describe("tampering is detected", () => {
      beforeAll(async () => { await dropAppendOnly(t.store); });

      it("an edited row", async () => {
        await t.store.db.run("UPDATE audit_log SET details = ? WHERE seq = 3", ['{"forged":true}']);
        const v = await t.store.verifyAudit();
        expect(v.ok).toBe(false);
        expect(v.problem).toMatchObject({ seq: 3 });
        expect(v.problem?.reason).toMatch(/modified/);
      });
    });
  });
}

/** Fresh stores for the destructive cases (each case tampers one way). */
function tamperSuite(name: string, make: () => Promise<TestStore>) {
  describe(`${name}: tamper cases`, () => {
    const cases: [string, (s: CaStore) => Promise<void>, RegExp][] = [
      ["deleted row", async (s) => { await s.db.run("DELETE FROM audit_log WHERE seq = 4"); }, /missing/],
      ["reordered rows (contents of 3 and 4 swapped)", async (s) => {
        const rows = await s.db.query("SELECT * FROM audit_log WHERE seq IN (3, 4) ORDER BY seq");
        const [a, b] = rows;
        if (!a || !b) throw new Error("seed failed");
        const set = "UPDATE audit_log SET at = ?, actor = ?, action = ?, target = ?, details = ?, prev_hash = ?, hash = ? WHERE seq = ?";
        const vals = (r: Record<string, unknown>) => [r.at, r.actor, r.action, r.target, r.details, r.prev_hash, r.hash].map(String);
        await s.db.run(set, [...vals(b), 3]);
        await s.db.run(set, [...vals(a), 4]);
      }, /does not link|modified/],
      ["re-hashed edit (attacker recomputes that row's hash)", async (s) => {
        const r = (await s.db.query("SELECT * FROM audit_log WHERE seq = 2"))[0];
        if (!r) throw new Error("seed failed");
        const { auditHash } = await import("./store.js");
        const h = auditHash(2, String(r.at), "someone-else", String(r.action), String(r.target), String(r.details), String(r.prev_hash));
        await s.db.run("UPDATE audit_log SET actor = 'someone-else', hash = ? WHERE seq = 2", [h]);
      }, /does not link/],
      ["truncated tail", async (s) => { await s.db.run("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)"); }, /head/],
    ];
    for (const [label, tamper, why] of cases) {
      it(label, async () => {
        const t = await make();
        try {
          for (let i = 0; i < 6; i++) await t.store.audit({ actor: "a", action: "seed", target: String(i) });
          expect((await t.store.verifyAudit()).ok).toBe(true);
          await dropAppendOnly(t.store);
          await tamper(t.store);
          const v = await t.store.verifyAudit();
          expect(v.ok).toBe(false);
          expect(v.problem?.reason).toMatch(why);
        } finally {
          await t.cleanup();
        }
      });
    }
  });
}

storeSuite("CaStore on SQLite", sqliteStore);
tamperSuite("SQLite", sqliteStore);

announcePgSkip("ca-service/store.test.ts");
describe.skipIf(!DATABASE_URL)(`CaStore on PostgreSQL${DATABASE_URL ? "" : ` (skipped: ${PG_SKIP_REASON})`}`, () => {
  storeSuite("CaStore on PostgreSQL", () => pgStore());
  tamperSuite("PostgreSQL", () => pgStore());

  describe("one-statement batches: two writers on one schema (two `ca serve` workers)", () => {
    let a: TestStore;
    let b: CaStore;
    let issuer: string;
    beforeAll(async () => {
      a = await pgStore();
      const db = new PostgresDb(DATABASE_URL, (a.store.db as PostgresDb).schema);
      b = await CaStore.fromDb(db);
      issuer = await seedCa(a.store);
    });
    afterAll(async () => { await b?.close(); await a?.cleanup(); });

    it("batches interleaved with the other writer's and with audit entries: every record once, one linear chain, the moved head noticed", async () => {
      const written: string[] = [];
      for (let round = 0; round < 6; round++) {
        const writers = [a.store, b, a.store, b];
        const certs = writers.map(() => Array.from({ length: 5 }, () => fakeCert(issuer)));
        // Both writers' batches at once, and an audit entry of the first writer (it moves the head under its own cache).
        await Promise.all([
          ...writers.map((w, i) => Promise.all((certs[i] ?? []).map((c) => w.recordIssued(c, "tester")))),
          round % 2 === 0 ? a.store.audit({ actor: "tester", action: "test.between", target: String(round) }) : Promise.resolve(),
        ]);
        written.push(...certs.flat().map((c) => c.serial));
      }
      // Another writer moved the head under each store's remembered one at least once: the one-statement write
      // found that and wrote nothing of that attempt (or the records would be there twice or the chain forked).
      expect(a.store.optimisticMisses + b.optimisticMisses).toBeGreaterThan(0);
      const rows = await a.store.db.query<{ serial: string }>(`SELECT serial FROM certificates WHERE issuer_id = ?`, [issuer]);
      expect(rows.map((r) => r.serial).sort()).toEqual([...written].sort());
      const audit = await a.store.listAudit({ afterSeq: 0, limit: 100000 });
      for (const s of written) expect(audit.filter((e) => e.target === s)).toHaveLength(1);
      expect(await a.store.verifyAudit()).toMatchObject({ ok: true, entries: audit.length });
    });

    it("a duplicate serial in a one-statement batch writes nothing of that statement and fails only its own record", async () => {
      const existing = fakeCert(issuer);
      await a.store.recordIssued(existing, "tester");
      const certs = [fakeCert(issuer), { ...fakeCert(issuer), serial: existing.serial }, fakeCert(issuer)];
      const out = await Promise.allSettled(certs.map((c) => a.store.recordIssued(c, "tester")));
      expect(out.map((o) => o.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
      expect(await a.store.verifyAudit()).toMatchObject({ ok: true });
      const audit = await a.store.listAudit({ afterSeq: 0, limit: 100000 });
      expect(audit.filter((e) => e.target === existing.serial)).toHaveLength(1);
    });
  });
});
