import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { generateKeyPairSync } from "node:crypto";
import { isEdgeTrustError } from "../../common/index.js";
import type { KeyStore } from "../../hsm/index.js";
import { DATABASE_URL, PG_SKIP_REASON, pgStore, softHsm, sqliteStore, type SoftHsm, type TestStore } from "../test-helpers.js";
import { groupKeyVault } from "./group-keys.js";
import { EnrollmentStore } from "./store.js";

// Group keys are wrapped by a key in the CA's token: one SoftHSM token for the file (the module loads once).
let hsm: SoftHsm;
let keys: KeyStore;
beforeAll(async () => {
  hsm = softHsm("et-enroll-store");
  keys = await hsm.open();
});
afterAll(async () => {
  await keys?.close();
  hsm?.cleanup();
});

const spki = () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "pem" }).toString();

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return isEdgeTrustError(e) ? e.code : String(e);
  }
}

const dialects: [string, () => Promise<TestStore>][] = [["SQLite", sqliteStore]];
if (DATABASE_URL) dialects.push(["PostgreSQL", () => pgStore()]);
else describe.skip(`enrollment store (PostgreSQL): ${PG_SKIP_REASON}`, () => { it("skipped", () => undefined); });

describe.each(dialects)("enrollment store (%s)", (_name, open) => {
  let ts: TestStore;
  let es: EnrollmentStore;
  beforeAll(async () => {
    ts = await open();
    es = new EnrollmentStore(ts.store, groupKeyVault(keys));
  });
  afterAll(async () => {
    await ts?.cleanup();
  });

  it("lines: token found by hash only while not revoked; quota counts created enrollments", async () => {
    const { line, token } = await es.createLine({ name: "l1", maxEnrollments: 1 }, "test");
    expect((await es.lineForToken(token ?? ""))?.id).toBe(line.id);
    const w = { actor: "line", lineId: line.id };
    expect((await es.putIndividual({ registrationId: "s-1", attestation: "publicKey", credential: spki() }, w)).outcome).toBe("inserted");
    expect(await code(es.putIndividual({ registrationId: "s-2", attestation: "publicKey", credential: spki() }, w))).toBe("QUOTA_EXCEEDED");
    await es.revokeLine(line.id, "test");
    expect(await es.lineForToken(token ?? "")).toBeUndefined();
    expect(await code(es.revokeLine(line.id, "test"))).toBe("NOT_FOUND");
  });

  it("registrations: replay with the same key returns the record; another key conflicts; a failed one may retry", async () => {
    const first = await es.beginRegistration("r-1", "individual:r-1", "key-00000001", "h1", "dev");
    expect(first.fresh).toBe(true);
    await es.completeRegistration("r-1", { ok: 1 }, {}, "dev");
    const again = await es.beginRegistration("r-1", "individual:r-1", "key-00000001", "h1", "dev");
    expect(again).toMatchObject({ fresh: false, record: { status: "assigned", result: { ok: 1 } } });
    expect(await code(es.beginRegistration("r-1", "individual:r-1", "key-00000002", "h1", "dev"))).toBe("REGISTRATION_CONFLICT");
    expect(await code(es.beginRegistration("r-1", "individual:r-1", "key-00000001", "h2", "dev"))).toBe("IDEMPOTENCY_KEY_REUSED");
    await es.resetRegistration("r-1", "admin");
    expect((await es.beginRegistration("r-1", "individual:r-1", "key-00000003", "h3", "dev")).fresh).toBe(true);
    expect((await ts.store.verifyAudit()).ok).toBe(true);
  });

  it("claims arriving together: one transaction; new ids fresh with their device records; a second claim of an id answered as if it came after the first", async () => {
    const claim = (id: string, key: string) => es.claimRegistration({
      registrationId: id, source: `individual:${id}`, idempotencyKey: key, requestSha256: "h", actor: `device:${id}`,
      device: { deviceId: id, kind: "device", commonName: id, dnsNames: [] },
    });
    const auditBefore = (await ts.store.listAudit({ limit: 100_000 })).length;
    const batches = { ...es.registrationBatches };
    const [a, b, replay, other] = await Promise.allSettled([claim("b-1", "key-0000000a"), claim("b-2", "key-0000000b"), claim("b-1", "key-0000000a"), claim("b-1", "key-0000000c")]);
    expect(es.registrationBatches.batches - batches.batches).toBe(1);
    expect(es.registrationBatches.retriedAlone).toBe(batches.retriedAlone);
    expect(a).toMatchObject({ status: "fulfilled", value: { fresh: true } });
    expect(b).toMatchObject({ status: "fulfilled", value: { fresh: true } });
    expect(replay).toMatchObject({ status: "fulfilled", value: { fresh: false, record: { registrationId: "b-1", status: "assigning" } } });
    expect(other.status === "rejected" && isEdgeTrustError(other.reason, "REGISTRATION_CONFLICT")).toBe(true);
    for (const id of ["b-1", "b-2"]) expect(await ts.store.getEnrollment(id)).toMatchObject({ deviceId: id, kind: "device", status: "enabled" });

    const results = { ...es.registrationBatches };
    await Promise.all([es.completeRegistration("b-1", { n: 1 }, { serial: "01" }, "device:b-1"), es.completeRegistration("b-2", { n: 2 }, { serial: "02" }, "device:b-2")]);
    expect(es.registrationBatches.batches - results.batches).toBe(1);
    expect(await es.getRegistration("b-1")).toMatchObject({ status: "assigned", result: { n: 1 } });
    expect(await es.getRegistration("b-2")).toMatchObject({ status: "assigned", result: { n: 2 } });
    const added = (await ts.store.listAudit({ limit: 100_000 })).slice(auditBefore).map((e) => `${e.action} ${e.target}`);
    expect(added).toEqual(["enrollment.upsert b-1", "enrollment.upsert b-2", "registration.assigned b-1", "registration.assigned b-2"]);
    expect((await ts.store.verifyAudit()).ok).toBe(true);
  });

  it("claims and results arriving together share one transaction; a replay beside its registration's result finds it assigned", async () => {
    const claim = (id: string, key: string) => es.claimRegistration({
      registrationId: id, source: `individual:${id}`, idempotencyKey: key, requestSha256: "h", actor: `device:${id}`,
      device: { deviceId: id, kind: "device", commonName: id, dnsNames: [] },
    });
    expect(await claim("m-1", "key-0000000m")).toMatchObject({ fresh: true });
    const auditBefore = (await ts.store.listAudit({ limit: 100_000 })).length;
    const before = { ...es.registrationBatches };
    // The replay is submitted before the result, in the same batch: results are written first.
    const [replay, fresh, done] = await Promise.all([claim("m-1", "key-0000000m"), claim("m-2", "key-0000000n"), es.completeRegistration("m-1", { n: 1 }, { serial: "0a" }, "device:m-1")]);
    expect(es.registrationBatches.batches - before.batches).toBe(1);
    expect(es.registrationBatches.records - before.records).toBe(3);
    expect(done).toBeUndefined();
    expect(replay).toMatchObject({ fresh: false, record: { registrationId: "m-1", status: "assigned", result: { n: 1 } } });
    expect(fresh).toMatchObject({ fresh: true });
    const added = (await ts.store.listAudit({ limit: 100_000 })).slice(auditBefore).map((e) => `${e.action} ${e.target}`);
    expect(added).toEqual(["registration.assigned m-1", "enrollment.upsert m-2"]);
    expect((await ts.store.verifyAudit()).ok).toBe(true);
  });

  it("individual enrollments read together: each its own row or none; PostgreSQL asks once; a read after a change sees it", async () => {
    const w = { actor: "admin", lineId: null };
    for (const id of ["i-1", "i-2"]) await es.putIndividual({ registrationId: id, attestation: "publicKey", credential: spki() }, w);
    const query = vi.spyOn(ts.store.db, "query");
    try {
      const [a, b, missing, again] = await Promise.all(["i-1", "i-2", "i-none", "i-1"].map((id) => es.getIndividual(id)));
      expect(a).toMatchObject({ registrationId: "i-1", status: "enabled" });
      expect(b).toMatchObject({ registrationId: "i-2", status: "enabled" });
      expect(missing).toBeUndefined();
      expect(again).toEqual(a);
      const reads = query.mock.calls.filter(([sql]) => sql.includes("FROM individual_enrollments")).length;
      expect(reads).toBe(ts.store.db.dialect === "postgres" ? 1 : 4);
    } finally {
      query.mockRestore();
    }
    await es.setIndividualStatus("i-2", "disabled", w);
    expect(await es.getIndividual("i-2")).toMatchObject({ status: "disabled" });
  });

  it("groups: the key is generated once, kept on update, never in the view", async () => {
    const g = await es.putGroup({ id: "g1", attestation: "symmetricKey" }, { actor: "admin", lineId: null });
    expect(g).toMatchObject({ hasGroupKey: true });
    expect(JSON.stringify(g)).not.toContain((await es.groupKey("g1")) ?? "none");
    const key = await es.groupKey("g1");
    await es.putGroup({ id: "g1", attestation: "symmetricKey", labels: { a: "b" } }, { actor: "admin", lineId: null });
    expect(await es.groupKey("g1")).toBe(key);
    expect(await code(es.putGroup({ id: "g2", attestation: "x509CA" }, { actor: "admin", lineId: null }))).toBe("INVALID_INPUT");
  });
});
