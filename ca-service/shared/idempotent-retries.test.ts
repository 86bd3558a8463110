import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import type { KeyStore } from "../../hsm/index.js";
import { CertificateAuthority } from "../ca.js";
import { SqliteDb } from "../db.js";
import { DeploymentStore } from "../deployments/store.js";
import { CaStore } from "../store.js";
import { DATABASE_URL, announcePgSkip, makeTestCa, quietLogger, softHsm, testConfig, twoPgStores, uniqueSchema, type SoftHsm, type TestCa, type TwoStores } from "../test-helpers.js";

/**
 * Issue 13: behind a load balancer a device whose answer was lost (a process killed after commit, a reset connection)
 * retries on whichever process answers. The retry must not create a second record: a renewal retried with the same
 * key gets the successor already issued, a report retried with the same Idempotency-Key is stored once. Two CA
 * engines on one store play the two processes (on PostgreSQL each with its own connection pool; on SQLite, which
 * serves one process, they share the connection).
 */
announcePgSkip("ca-service/shared/idempotent-retries.test.ts");

type Fleet = TwoStores;

async function sqliteFleet(): Promise<Fleet> {
  const dir = mkdtempSync(join(tmpdir(), "et-idem-"));
  const a = await CaStore.fromDb(new SqliteDb(join(dir, "ca.db")));
  return { a, b: a, close: async () => { await a.close(); rmSync(dir, { recursive: true, force: true }); } };
}

const pgFleet = (): Promise<Fleet> => twoPgStores(uniqueSchema("et_idem"));

const fleets: Array<[string, () => Promise<Fleet>]> = [["SQLite", sqliteFleet]];
if (DATABASE_URL) fleets.push(["PostgreSQL", pgFleet]);

const ES256 = { name: "ECDSA", hash: "SHA-256" } as const;
async function keyAndCsr(cn: string): Promise<{ csr: string; spki: string }> {
  const keys = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const csr = (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: ES256 })).toString("pem");
  return { csr, spki: Buffer.from(await crypto.subtle.exportKey("spki", keys.publicKey)).toString("hex") };
}

describe.each(fleets)("retried requests on another process create nothing twice (%s)", (_name, open) => {
  let f: Fleet;
  let hsm: SoftHsm;
  let keys: KeyStore;
  let test: TestCa;
  let a: CertificateAuthority;
  let b: CertificateAuthority;

  beforeAll(async () => {
    f = await open();
    hsm = softHsm(`et-idem-${_name.toLowerCase()}`);
    keys = await hsm.open();
    test = await makeTestCa(f.a, keys, testConfig());
    a = test.ca;
    b = await CertificateAuthority.load(f.b, keys, { trustDomain: test.config.trustDomain, publicBaseUrl: test.config.publicBaseUrl, logger: quietLogger() });
  }, 120_000);

  afterAll(async () => {
    await keys?.close();
    hsm?.cleanup();
    await f?.close();
  });

  const device = async (id: string) => {
    await f.a.upsertEnrollment({ deviceId: id, kind: "device", commonName: id, dnsNames: [] }, "test");
    const k = await keyAndCsr(id);
    const issued = await a.issue({ csrPem: k.csr, profile: "device-identity", deviceId: id }, "test");
    return { ...k, der: new Uint8Array(issued.certificate.rawData), serial: issued.record.serial };
  };
  const successors = async (serial: string) =>
    (await f.a.db.query<{ serial: string }>("SELECT serial FROM certificates WHERE replaces_serial = ?", [serial])).map((r) => r.serial);

  it("a renewal retried on the other process returns the successor the first one issued; a new key is a new successor", async () => {
    const d = await device("idem-renew-1");
    const first = await a.renew(d.der, d.csr);
    const retry = await b.renew(d.der, d.csr);
    expect(retry.record.serial).toBe(first.record.serial);
    expect(retry.certificate.toString("pem")).toBe(first.certificate.toString("pem"));
    expect(await successors(d.serial)).toEqual([first.record.serial]);
    // A rekey from the same certificate is another request (another key): it gets its own successor.
    const rekey = await keyAndCsr("idem-renew-1");
    const second = await b.renew(d.der, rekey.csr);
    expect(second.rekey).toBe(true);
    expect(second.record.serial).not.toBe(first.record.serial);
    expect((await successors(d.serial)).sort()).toEqual([first.record.serial, second.record.serial].sort());
  });

  it("a renewal and its retry arriving on both processes at once issue one certificate, and both get it", async () => {
    const d = await device("idem-renew-2");
    const [x, y] = await Promise.all([a.renew(d.der, d.csr), b.renew(d.der, d.csr)]);
    expect(y.record.serial).toBe(x.record.serial);
    expect(await successors(d.serial)).toEqual([x.record.serial]);
    expect((await f.a.verifyAudit()).ok).toBe(true);
  }, 60_000);

  it("a report retried with the same Idempotency-Key on the other process is stored once; without a key, twice", async () => {
    const da = new DeploymentStore(f.a);
    const db = new DeploymentStore(f.b);
    const body = { at: new Date().toISOString(), kind: "last-known-good", deviceId: "idem-report" };
    const id1 = await da.addReport("idem-report", "last-known-good", body, "report-key-0001");
    const id2 = await db.addReport("idem-report", "last-known-good", body, "report-key-0001");
    expect(id2).toBe(id1);
    // The same key from another device is that device's own report.
    expect(await db.addReport("idem-report-other", "last-known-good", body, "report-key-0001")).not.toBe(id1);
    expect(await da.reports("idem-report")).toHaveLength(1);
    await da.addReport("idem-report", "last-known-good", body);
    await db.addReport("idem-report", "last-known-good", body);
    expect(await db.reports("idem-report")).toHaveLength(3);
  });
});
