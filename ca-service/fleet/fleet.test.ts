import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { DATABASE_URL, announcePgSkip, pgStore, sqliteStore, type TestStore } from "../test-helpers.js";
import { FleetQueries } from "./queries.js";
import { recordAttestation, recordReport } from "./record.js";

announcePgSkip("ca-service/fleet/fleet.test.ts");

const bad = { status: "contraindicated" as const, reason: "policy digest sha256:99… is not a reference value", reference: "policy p.yaml: attestation.policy: self" };
const ok = { status: "affirming" as const, reason: "agent digest is a reference value" };

for (const [name, make] of [["SQLite", sqliteStore], ["PostgreSQL", pgStore]] as const) {
  describe.skipIf(name === "PostgreSQL" && !DATABASE_URL)(`fleet read models (${name})`, () => {
    let t: TestStore;
    let q: FleetQueries;
    const now = Date.now();
    beforeAll(async () => {
      t = await make();
      q = new FleetQueries(t.store);
      await t.store.db.run("INSERT INTO cas (id, kind, name, parent_id, cert_pem, key_label, key_algorithm, not_before, not_after, status, created_at) VALUES ('iss', 'issuing', 'i', NULL, '', 'k', 'EC-P256', ?, ?, 'active', ?)", [new Date(now).toISOString(), new Date(now + 1e10).toISOString(), new Date(now).toISOString()]);
      for (const id of ["d-1", "d-2", "d-3", "x%_1"]) await t.store.upsertEnrollment({ deviceId: id, kind: "device", commonName: id, dnsNames: [] }, "test");
      for (const [i, [id, days]] of ([["d-1", 3], ["d-2", 60], ["d-1", 100]] as const).entries()) {
        await t.store.recordIssued({ serial: `a${i}`, issuerId: "iss", profile: "device-identity", subject: "CN=x", sans: [], deviceId: id, spkiSha256: "", fingerprintSha256: `f${i}`, notBefore: new Date(now).toISOString(), notAfter: new Date(now + days * 86400e3).toISOString(), certPem: "", replacesSerial: null }, "test");
      }
    });
    afterAll(async () => { await t?.cleanup(); });

    it("the latest attestation per device, failing claims worst first; counts follow status changes (counters kept by triggers)", async () => {
      await recordAttestation(t.store, { deviceId: "d-1", status: "affirming", claims: { agent: ok }, reference: "p" });
      await recordAttestation(t.store, { deviceId: "d-2", status: "contraindicated", claims: { agent: ok, policy: bad, "module:x": { status: "warning", reason: "w" } }, reference: "p" });
      let c = await q.counts(now);
      expect(c).toMatchObject({ devices: 4, byStatus: { affirming: 1, warning: 0, contraindicated: 1, unknown: 2 } });
      // An older result (concurrent verification finishing late) never replaces a newer one.
      await recordAttestation(t.store, { deviceId: "d-2", status: "affirming", claims: { agent: ok }, reference: "p", at: new Date(now - 3600e3).toISOString() });
      const d2 = await q.device("d-2");
      expect(d2?.attestation?.status).toBe("contraindicated");
      expect(d2?.attestation?.failing.map((f) => f.claim)).toEqual(["policy", "module:x"]);
      expect(d2?.attestation?.failing[0]).toMatchObject({ status: "contraindicated", reason: bad.reason, reference: bad.reference });
      await recordAttestation(t.store, { deviceId: "d-1", status: "contraindicated", claims: { policy: bad }, reference: "p" });
      c = await q.counts(now);
      expect(c.byStatus).toEqual({ affirming: 0, warning: 0, contraindicated: 2, unknown: 2 });
      const day = new Date(now).toISOString().slice(0, 10);
      const att = await q.attestationsPerDay(14, now);
      expect(att).toHaveLength(14);
      // Today: d-1 affirming then contraindicated, d-2 contraindicated; the late result is stamped an hour ago.
      const lateDay = new Date(now - 3600e3).toISOString().slice(0, 10);
      expect(att[13]).toEqual({ day, counts: { affirming: lateDay === day ? 2 : 1, contraindicated: 2 } });
      if (lateDay !== day) expect(att[12]).toEqual({ day: lateDay, counts: { affirming: 1 } });
      expect((await q.issuancePerDay(14, now))[13]?.counts).toEqual({ "device-identity": 3 });
    });

    it("filters: status (and never attested), substring search with LIKE wildcards taken literally, expiring identity certificates; keyset pages", async () => {
      expect((await q.fleet({ status: "contraindicated" })).rows.map((r) => r.deviceId)).toEqual(["d-1", "d-2"]);
      expect((await q.fleet({ status: "unknown" })).rows.map((r) => r.deviceId)).toEqual(["d-3", "x%_1"]);
      expect((await q.fleet({ q: "%_" })).rows.map((r) => r.deviceId)).toEqual(["x%_1"]);
      expect((await q.fleet({ q: "D-" })).rows.map((r) => r.deviceId)).toEqual(["d-1", "d-2", "d-3"]);
      // d-1's newest identity certificate runs 100 days: not expiring although an older one does in 3.
      expect((await q.fleet({ expiringWithinDays: 7 })).rows.map((r) => r.deviceId)).toEqual([]);
      expect((await q.fleet({ expiringWithinDays: 61 })).rows.map((r) => r.deviceId)).toEqual(["d-2"]);
      expect((await q.counts(now)).expiringWithin7Days).toBe(0);
      const p1 = await q.fleet({ limit: 2 });
      expect(p1.rows.map((r) => r.deviceId)).toEqual(["d-1", "d-2"]);
      expect(p1.next).toBe("d-2");
      const p2 = await q.fleet({ limit: 2, after: p1.next });
      expect(p2.rows.map((r) => r.deviceId)).toEqual(["d-3", "x%_1"]);
      expect(p2.next).toBeUndefined();
    });

    it("reports: the deployment applied, rollout applied/refused with reasons", async () => {
      await recordReport(t.store, "d-1", { kind: "manifest-accepted", deploymentId: "dep", version: 3 });
      await recordReport(t.store, "d-2", { kind: "manifest-rejected", deploymentId: "dep", version: 3, reasons: ["threshold: 1 of 2"] });
      expect((await q.device("d-1"))?.deployment).toEqual({ id: "dep", version: 3 });
      expect((await q.device("d-2"))?.deployment).toBeNull();
      expect((await q.device("d-2"))?.lastReport?.kind).toBe("manifest-rejected");
      expect(await q.rolloutCounts()).toEqual([{ deploymentId: "dep", version: 3, applied: 1, refused: 1 }]);
      expect((await q.rollout("dep", 3)).rows.find((r) => r.deviceId === "d-2")).toMatchObject({ outcome: "refused", reasons: ["threshold: 1 of 2"] });
    });

    it("audit: filters by action prefix, actor substring and target; newest first with a cursor", async () => {
      const all = await q.audit({ action: "cert.", limit: 2 });
      expect(all.entries.map((e) => e.target)).toEqual(["a2", "a1"]);
      expect((await q.audit({ action: "cert.", beforeSeq: all.next })).entries.map((e) => e.target)).toEqual(["a0"]);
      expect((await q.audit({ target: "d-3" })).entries.map((e) => e.action)).toEqual(["enrollment.upsert"]);
      expect((await q.audit({ actor: "TES" })).entries.length).toBeGreaterThan(3);
      expect((await q.auditAbout(["d-1", "a0", "a2"])).map((e) => e.target)).toEqual(["a2", "a0", "d-1"]);
    });
  });
}
