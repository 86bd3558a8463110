import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import pg from "pg";
import * as x509 from "@peculiar/x509";
import { EdgeTrustError } from "../common/index.js";
import { PostgresDb } from "./db.js";
import { CaStore } from "./store.js";
import { DATABASE_URL, PG_SKIP_REASON, announcePgSkip, csrFor, makeTestCa, softHsm, testConfig, uniqueSchema, type SoftHsm, type TestCa } from "./test-helpers.js";

/**
 * A revocation commits before its CRL is signed (two transactions), so the store can go away between them — what the
 * fleet's chaos test hit when PostgreSQL restarted under a revoking admin: 503, the certificate revoked, the CRL not
 * re-signed, and every retry a 409 CONFLICT "already revoked" that never published the CRL either. Here the CRL
 * transaction is made to wait on its lock (held by this test) and its backend is terminated, as a restart does; the
 * retry with the same reason must answer the revoked record and publish a CRL that lists it.
 */
announcePgSkip("ca-service/revoke-retry.test.ts");

describe.skipIf(!DATABASE_URL)(`revocation whose CRL transaction loses the store${DATABASE_URL ? "" : ` (${PG_SKIP_REASON})`}`, () => {
  const schema = uniqueSchema("et_revretry");
  const appName = `et_revretry_${randomBytes(6).toString("hex")}`;
  let hsm: SoftHsm;
  let store: CaStore;
  let t: TestCa;
  // The test's own connection (another application_name): it holds the CRL lock and terminates the CA's backend.
  const admin = new pg.Client({ connectionString: DATABASE_URL });

  beforeAll(async () => {
    hsm = softHsm(`et-revretry-${randomBytes(3).toString("hex")}`);
    const db = new PostgresDb(`${DATABASE_URL}${DATABASE_URL.includes("?") ? "&" : "?"}application_name=${appName}`, schema);
    await db.init();
    store = await CaStore.fromDb(db);
    t = await makeTestCa(store, await hsm.open(), testConfig());
    await admin.connect();
  }, 120_000);

  afterAll(async () => {
    await admin.end().catch(() => undefined);
    await (store?.db as PostgresDb | undefined)?.dropSchema().catch(() => undefined);
    await store?.close();
    await t?.keys.close();
    hsm?.cleanup();
  });

  const crlOf = async (issuerId: string) => {
    const c = await store.currentCrl(issuerId);
    if (!c) throw new Error("no CRL");
    return { crlNumber: c.crlNumber, lists: (serial: string) => new x509.X509Crl(new Uint8Array(c.der)).findRevoked(serial.length % 2 ? `0${serial}` : serial) !== null };
  };

  it("answers 503 STORAGE_UNAVAILABLE; the same revocation again answers the revoked record and publishes a CRL listing it, once", async () => {
    await store.upsertEnrollment({ deviceId: "rev-dev", kind: "device", commonName: "rev-dev", dnsNames: [] }, "test");
    const { record } = await t.ca.issue({ csrPem: await csrFor("rev-dev"), profile: "device-identity", deviceId: "rev-dev" }, "test");
    const issuerId = record.issuerId;
    const before = (await t.ca.generateCrl(issuerId)).crlNumber;

    // The CRL is built under the issuer's advisory lock (db.ts `exclusive`: hashtext('<schema>:crl:<issuer>')).
    await admin.query("BEGIN");
    await admin.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`${schema}:crl:${issuerId}`]);
    const first = t.ca.revoke(record.serial, "keyCompromise", "test").then(() => undefined, (e: unknown) => e);
    let terminated = 0;
    try {
      for (let i = 0; i < 300 && terminated === 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
        const waiting = await admin.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'", [appName]);
        if (waiting.rows.length === 0) continue;
        terminated = (await admin.query("SELECT pg_terminate_backend($1)", [waiting.rows[0]?.pid])).rowCount ?? 0;
      }
    } finally {
      await admin.query("COMMIT");
    }
    expect(terminated).toBe(1);
    const err = await first;
    expect(err).toBeInstanceOf(EdgeTrustError);
    expect(err).toMatchObject({ code: "STORAGE_UNAVAILABLE", status: 503, retryAfterSeconds: 2 });

    // What the failure left: the certificate revoked, the CRL not re-signed (the window a retry must close).
    expect(await store.getCertificate(record.serial)).toMatchObject({ status: "revoked", revocationReason: "keyCompromise" });
    expect((await crlOf(issuerId)).lists(record.serial)).toBe(false);

    // The retry (the pool may first hand out another connection of the terminated kind: at most a few 503s).
    let again: Awaited<ReturnType<typeof t.ca.revoke>> | undefined;
    for (let i = 0; i < 20 && !again; i++) {
      again = await t.ca.revoke(record.serial, "keyCompromise", "test").catch((e: unknown) => {
        if (!(e instanceof EdgeTrustError) || e.code !== "STORAGE_UNAVAILABLE") throw e;
        return undefined;
      });
    }
    expect(again).toMatchObject({ serial: record.serial, status: "revoked", revocationReason: "keyCompromise" });
    const after = await crlOf(issuerId);
    expect(after.lists(record.serial)).toBe(true);
    expect(after.crlNumber).toBe(before + 1);

    // Once the CRL lists it, a further retry answers the same without signing another CRL.
    expect(await t.ca.revoke(record.serial, "keyCompromise", "test")).toMatchObject({ status: "revoked" });
    expect((await crlOf(issuerId)).crlNumber).toBe(before + 1);
    // Another reason is no retry: the first reason stands.
    await expect(t.ca.revoke(record.serial, "superseded", "test")).rejects.toMatchObject({ code: "CONFLICT" });
  }, 60_000);
});
