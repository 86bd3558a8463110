import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { randomBytes } from "node:crypto";
import { DATABASE_URL, PG_SKIP_REASON, announcePgSkip, pgStore, sqliteStore, type TestStore } from "./test-helpers.js";
import { type CaStore, type NewCertificate, sha256Hex } from "./store.js";
import { isEdgeTrustError } from "../common/index.js";
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
      const r = await t.store.revoke(c.serial.toUpperCase(), "keyCompromise", "admin");
      expect(r.status).toBe("revoked");
      expect(r.revocationReason).toBe("keyCompromise");
      await expect(t.store.revoke(c.serial, "superseded", "admin")).rejects.toSatisfy((e) => isEdgeTrustError(e, "CONFLICT"));
      await expect(t.store.revoke("abcdef", "superseded", "admin")).rejects.toSatisfy((e) => isEdgeTrustError(e, "NOT_FOUND"));
      const h = fakeCert(issuer);
      await t.store.recordIssued(h, "tester");
      await t.store.revoke(h.serial, "certificateHold", "admin");
      expect((await t.store.revoke(h.serial, "removeFromCRL", "admin")).status).toBe("good");
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
});
