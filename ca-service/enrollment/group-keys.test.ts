import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SoftwareKeyStore } from "../../hsm/index.js";
import { SqliteDb } from "../db.js";
import { MIGRATIONS, migrate } from "../migrations.js";
import { createCaServer } from "../server.js";
import { CaStore } from "../store.js";
import { DATABASE_URL, PG_SKIP_REASON, pgStore, quietLogger } from "../test-helpers.js";
import { deriveDeviceKey } from "./credentials.js";
import { GROUP_KEY_WRAP_LABEL, groupKeyVault } from "./group-keys.js";
import { EnrollmentStore } from "./store.js";
import { csrPem, ecKeys, startEnrollmentCa, type EnrollmentCa } from "./test-fixtures.js";

/**
 * Issue 17: symmetric group enrollment keys are stored wrapped by a key in the CA's PKCS#11 token (real SoftHSM2),
 * so the database alone holds no usable key. Each test is the attacker's view: the bytes a database thief gets, an
 * old plain row, an altered row.
 */
let e: EnrollmentCa;
let lineToken: string;

const SCOPE = "0ne00WRAP";
function sas(registrationId: string, keyB64: string): string {
  const sr = encodeURIComponent(`${SCOPE}/registrations/${registrationId}`);
  const se = Math.floor(Date.now() / 1000) + 600;
  const sig = createHmac("sha256", Buffer.from(keyB64, "base64")).update(`${sr}\n${se}`).digest("base64");
  return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}&skn=registration`;
}

async function row(id: string, store = e.ts.store): Promise<{ group_key: string; group_key_form: string }> {
  const r = (await store.db.query<{ group_key: string; group_key_form: string }>("SELECT group_key, group_key_form FROM enrollment_groups WHERE id = ?", [id]))[0];
  if (!r) throw new Error(`no row ${id}`);
  return r;
}

async function issuedTo(deviceId: string): Promise<number> {
  const rows = await e.ts.store.db.query<{ n: number | string }>("SELECT COUNT(*) AS n FROM certificates WHERE device_id = ?", [deviceId]);
  return Number(rows[0]?.n ?? 0);
}

async function createGroup(id: string): Promise<string> {
  const r = await e.call("PUT", `/v1/enrollment-groups/${id}`, { token: lineToken, body: { attestation: "symmetricKey", edgeCa: false } });
  expect(r.status, r.body.toString()).toBe(201);
  return String(r.json().groupKey);
}

/** Registration on the JSON route with HTTP Basic `registrationId:<derived key>`. */
async function registerBasic(id: string, deviceKey: string): Promise<{ status: number; json: () => Record<string, unknown>; body: Buffer }> {
  const csr = await csrPem(await ecKeys(), id);
  return e.call("PUT", `/v1/registrations/${id}`, { authorization: `Basic ${Buffer.from(`${id}:${deviceKey}`).toString("base64")}`, headers: { "idempotency-key": `${id}-1` }, body: { csr } });
}

/** Every key an attacker could try from the stored text: as base64, and the blob after the form prefix. */
function keysFromStoredBytes(stored: string): string[] {
  return [stored, stored.replace(/^v1\./, ""), Buffer.from(stored, "utf8").toString("base64")];
}

beforeAll(async () => {
  e = await startEnrollmentCa();
  lineToken = String((await e.call("POST", "/v1/lines", { token: e.t.init.adminToken, body: { name: "wrap line" } })).json().token);
});

afterAll(async () => {
  await e?.close();
});

describe("symmetric group keys are wrapped by the CA key store", () => {
  it("SQLite: the stored bytes are not the key, and HMAC with them gives no device key or SAS the CA accepts; the right derived key enrolls", async () => {
    const groupKey = await createGroup("wrap-sym");
    const r = await row("wrap-sym");
    expect(r.group_key_form).toBe("wrapped-v1");
    expect(r.group_key).toMatch(/^v1\./);
    expect(r.group_key).not.toContain(groupKey);
    expect(Buffer.from(r.group_key.slice(3), "base64").includes(Buffer.from(groupKey, "base64"))).toBe(false);
    // The wrapping key lives in the token as a non-extractable secret, not in the database.
    expect(await e.t.keys.mac?.listMacKeys()).toContain(GROUP_KEY_WRAP_LABEL);

    for (const [i, k] of keysFromStoredBytes(r.group_key).entries()) {
      const id = `wrap-thief-${i}`;
      const stolen = deriveDeviceKey(k, id);
      const basic = await registerBasic(id, stolen);
      expect(basic.status, basic.body.toString()).toBe(401);
      const csr = await csrPem(await ecKeys(), id);
      const dps = await e.call("PUT", `/${SCOPE}/registrations/${id}/register?api-version=2019-03-31`, { authorization: sas(id, stolen), body: { registrationId: id, payload: { csr } } });
      expect(dps.status, dps.body.toString()).toBe(401);
      expect(await issuedTo(id)).toBe(0);
    }

    const ok = await registerBasic("wrap-dev-1", deriveDeviceKey(groupKey, "wrap-dev-1"));
    expect(ok.status, ok.body.toString()).toBe(201);
    expect(await issuedTo("wrap-dev-1")).toBeGreaterThan(0);
    const csr = await csrPem(await ecKeys(), "wrap-dev-2");
    const dps = await e.call("PUT", `/${SCOPE}/registrations/wrap-dev-2/register?api-version=2019-03-31`, { authorization: sas("wrap-dev-2", deriveDeviceKey(groupKey, "wrap-dev-2")), body: { registrationId: "wrap-dev-2", payload: { csr } } });
    expect(dps.status, dps.body.toString()).toBe(202);
    // An update without a new key keeps the wrapped row as it is; the devices' keys still derive from the same key.
    const before = (await row("wrap-sym")).group_key;
    const upd = await e.call("PUT", "/v1/enrollment-groups/wrap-sym", { token: lineToken, body: { attestation: "symmetricKey", edgeCa: false, labels: { site: "b" } } });
    expect(upd.status, upd.body.toString()).toBe(200);
    expect(upd.json().groupKey).toBeUndefined();
    expect((await row("wrap-sym")).group_key).toBe(before);
  });

  it("a row whose wrapped bytes are altered, or copied from another group, is refused with the group named; nothing is issued", async () => {
    const key = await createGroup("wrap-tamper");
    const other = await createGroup("wrap-other");
    const r = await row("wrap-tamper");
    const raw = Buffer.from(r.group_key.slice(3), "base64");
    raw[raw.length - 1] = (raw[raw.length - 1] ?? 0) ^ 1;
    await e.ts.store.db.run("UPDATE enrollment_groups SET group_key = ? WHERE id = ?", [`v1.${raw.toString("base64")}`, "wrap-tamper"]);
    const res = await registerBasic("tamper-dev", deriveDeviceKey(key, "tamper-dev"));
    expect(res.status, res.body.toString()).toBe(503);
    expect(res.json()).toMatchObject({ code: "CA_STORE_REFUSED" });
    expect(String(res.json().detail)).toMatch(/wrapped group key of enrollment group wrap-tamper is refused: its authentication tag does not verify/);
    expect(await issuedTo("tamper-dev")).toBe(0);

    // The other group's valid blob in this row: bound to its own group id, so it does not open here either.
    await e.ts.store.db.run("UPDATE enrollment_groups SET group_key = ? WHERE id = ?", [(await row("wrap-other")).group_key, "wrap-tamper"]);
    const moved = await registerBasic("moved-dev", deriveDeviceKey(other, "moved-dev"));
    // The device of the untouched group is still served; a device of the damaged group is refused.
    expect(moved.status, moved.body.toString()).toBe(201);
    const res2 = await registerBasic("tamper-dev-2", deriveDeviceKey(key, "tamper-dev-2"));
    expect(res2.status).toBe(503);
    expect(await issuedTo("tamper-dev-2")).toBe(0);
    await e.ts.store.db.run("DELETE FROM enrollment_groups WHERE id = ?", ["wrap-tamper"]);
  });

  it("an old plain row is wrapped at its first use and at `ca serve` start (idempotent), and its devices still enroll", async () => {
    const key = await createGroup("wrap-old");
    await e.ts.store.db.run("UPDATE enrollment_groups SET group_key = ?, group_key_form = 'plain' WHERE id = ?", [key, "wrap-old"]);
    const ok = await registerBasic("old-dev-1", deriveDeviceKey(key, "old-dev-1"));
    expect(ok.status, ok.body.toString()).toBe(201);
    expect(await row("wrap-old")).toMatchObject({ group_key_form: "wrapped-v1" });
    expect((await row("wrap-old")).group_key).not.toContain(key);

    await e.ts.store.db.run("UPDATE enrollment_groups SET group_key = ?, group_key_form = 'plain' WHERE id = ?", [key, "wrap-old"]);
    const second = await createCaServer(e.t.config, { ca: e.t.ca, store: e.ts.store, logger: quietLogger() });
    await second.listen();
    await second.close();
    const wrapped = await row("wrap-old");
    expect(wrapped.group_key_form).toBe("wrapped-v1");
    expect(wrapped.group_key).not.toContain(key);
    expect(await new EnrollmentStore(e.ts.store, groupKeyVault(e.t.keys)).wrapPlainGroupKeys()).toBe(0);
    expect((await row("wrap-old")).group_key).toBe(wrapped.group_key);
    const again = await registerBasic("old-dev-2", deriveDeviceKey(key, "old-dev-2"));
    expect(again.status, again.body.toString()).toBe(201);
    expect((await e.ts.store.verifyAudit()).ok).toBe(true);
  });

  it("a database written before the wrapping (schema before migration 170) is migrated: its rows marked plain, then wrapped once", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-groupkeys-"));
    const db = new SqliteDb(join(dir, "ca.db"));
    try {
      await migrate(db, MIGRATIONS.filter((m) => m.version < 170));
      const now = new Date().toISOString();
      const key = Buffer.alloc(32, 9).toString("base64");
      await db.run("INSERT INTO enrollment_groups (id, attestation, ca_cert_pem, group_key, profile, lifetime_days, edge_ca, labels, status, line_id, created_at, updated_at) VALUES (?, 'symmetricKey', NULL, ?, 'device-identity', NULL, 0, '{}', 'enabled', NULL, ?, ?)", ["legacy", key, now, now]);
      const store = await CaStore.fromDb(db);
      expect(await row("legacy", store)).toEqual({ group_key: key, group_key_form: "plain" });
      const es = new EnrollmentStore(store, groupKeyVault(e.t.keys));
      expect(await es.wrapPlainGroupKeys()).toBe(1);
      expect(await es.wrapPlainGroupKeys()).toBe(0);
      const r = await row("legacy", store);
      expect(r.group_key_form).toBe("wrapped-v1");
      expect(r.group_key).not.toContain(key);
      expect(await es.groupKey("legacy")).toBe(key);
      // Without the CA key store a process can neither read nor set a group key.
      await expect(new EnrollmentStore(store).groupKey("legacy")).rejects.toMatchObject({ code: "UNAVAILABLE" });
    } finally {
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("symmetric group keys with the development software store", () => {
  it("the wrapping key is a sealed file of that store; another store (or passphrase) cannot open the wrapped key", async () => {
    const dir = mkdtempSync(join(tmpdir(), "et-groupkeys-sw-"));
    try {
      const sw = await SoftwareKeyStore.open({ dir: join(dir, "keys"), passphrase: "dev-pass", logger: quietLogger() });
      const vault = groupKeyVault(sw);
      if (!vault) throw new Error("software store has no MAC keys");
      const key = Buffer.alloc(32, 5).toString("base64");
      const stored = await vault.wrap("sw-group", key);
      expect(stored).not.toContain(key);
      expect(await vault.unwrap("sw-group", stored)).toBe(key);
      const sealed = join(dir, "keys", `${GROUP_KEY_WRAP_LABEL}.mac.json`);
      expect(existsSync(sealed)).toBe(true);
      expect(readFileSync(sealed, "utf8")).not.toContain(key);
      // The CA's SoftHSM token holds a different wrapping key: the blob does not open there.
      await expect(groupKeyVault(e.t.keys)?.unwrap("sw-group", stored)).rejects.toMatchObject({ code: "CA_STORE_REFUSED" });
      const wrongPass = await SoftwareKeyStore.open({ dir: join(dir, "keys"), passphrase: "not-the-pass", logger: quietLogger() });
      await expect(groupKeyVault(wrongPass)?.unwrap("sw-group", stored)).rejects.toMatchObject({ code: "KEYSTORE_SOFTWARE_PASSPHRASE" });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

if (DATABASE_URL) {
  describe("symmetric group keys are wrapped (PostgreSQL)", () => {
    it("the stored bytes are not the key and HMAC with them does not give the device key; the key unwraps at use", async () => {
      const pg = await pgStore();
      try {
        const es = new EnrollmentStore(pg.store, groupKeyVault(e.t.keys));
        await es.putGroup({ id: "pg-sym", attestation: "symmetricKey" }, { actor: "admin", lineId: null });
        const key = await es.groupKey("pg-sym");
        if (!key) throw new Error("no key");
        const r = await row("pg-sym", pg.store);
        expect(r.group_key_form).toBe("wrapped-v1");
        expect(r.group_key).not.toContain(key);
        for (const k of keysFromStoredBytes(r.group_key)) expect(deriveDeviceKey(k, "pg-dev")).not.toBe(deriveDeviceKey(key, "pg-dev"));
      } finally {
        await pg.cleanup();
      }
    });
  });
} else {
  describe.skip(`symmetric group keys are wrapped (PostgreSQL): ${PG_SKIP_REASON}`, () => { it("skipped", () => undefined); });
}
