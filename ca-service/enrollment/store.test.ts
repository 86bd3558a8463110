import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKeyPairSync } from "node:crypto";
import { isEdgeTrustError } from "../../common/index.js";
import { DATABASE_URL, PG_SKIP_REASON, pgStore, sqliteStore, type TestStore } from "../test-helpers.js";
import { EnrollmentStore } from "./store.js";

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
    es = new EnrollmentStore(ts.store);
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
