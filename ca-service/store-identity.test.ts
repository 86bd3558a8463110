import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { SOFTHSM_MODULE } from "../hsm/index.js";
import { CaStore } from "./store.js";
import { SqliteDb } from "./db.js";
import { openCaStore, readIdentity } from "./store-identity.js";
import { makeTestCa, softHsm, testConfig, TEST_PIN, type SoftHsm } from "./test-helpers.js";
import { cliBundleArgs } from "../test/fixtures/cli-bundle.js";

/**
 * Issue 17, fault run: "an emptied CA database becomes a new CA". A store that held a CA is never silently
 * re-created: the CA's identity (root fingerprint, store location) is recorded beside its config and checked at
 * every open; a zero-byte, missing, half-truncated or foreign store is refused naming its file — by `ca serve`,
 * `ca audit verify` and `ca init` alike — and nothing is written to it.
 */
const CLI = cliBundleArgs();
const ROOT = fileURLToPath(new URL("..", import.meta.url));

let hsm: SoftHsm;
let dir: string;
let cfg: string;
let db: string;
let backup: string;

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...CLI, "ca", ...args, "-c", cfg], {
      cwd: ROOT, env: { ...process.env, SOFTHSM2_CONF: hsm.conf, CA_TEST_PIN: TEST_PIN }, encoding: "utf8", timeout: 120_000,
    }, (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

function restore(): void {
  for (const s of ["-wal", "-shm"]) if (existsSync(db + s)) unlinkSync(db + s);
  copyFileSync(backup, db);
}

beforeAll(async () => {
  hsm = softHsm("et-ca-identity");
  dir = mkdtempSync(join(tmpdir(), "et-ca-identity-"));
  cfg = join(dir, "edgetrust.yaml");
  db = join(dir, "data", "ca.db");
  writeFileSync(cfg, [
    "log:", "  level: error",
    "hsm:", "  backend: pkcs11", `  module: ${SOFTHSM_MODULE}`, `  tokenLabel: ${hsm.tokenLabel}`, "  pinEnv: CA_TEST_PIN",
    "ca:", `  sqlitePath: ${db}`, "  trustDomain: identity.edgetrust", "  port: 0", "  revocationPort: -1", "",
  ].join("\n"));
  const { mkdirSync } = await import("node:fs");
  mkdirSync(join(dir, "data"));
  const init = await cli(["init", "--json", "--root-out", join(dir, "root.pem")]);
  expect(init.code, init.stderr).toBe(0);
  expect((await cli(["enrollment", "set", "dev-1"])).code).toBe(0);
  backup = join(dir, "ca.db.backup");
  copyFileSync(db, backup);
});

afterAll(() => {
  hsm?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("the CA's identity lives outside its store", () => {
  it("ca init records root fingerprint and store location beside the config", async () => {
    const id = readIdentity(join(dir, "ca-identity.json"));
    const { X509Certificate } = await import("node:crypto");
    const root = new X509Certificate(readFileSync(join(dir, "root.pem")));
    expect(id).toMatchObject({ version: 1, rootSha256: root.fingerprint256.replace(/:/g, "").toLowerCase(), store: `sqlite:${db}` });
  });

  it("a zero-byte store is refused with its path by serve, audit verify and init; it stays zero bytes", async () => {
    restore();
    truncateSync(db, 0);
    const serve = await cli(["serve"]);
    expect(serve.code).not.toBe(0);
    expect(serve.stderr).toContain(`CA store ${db} is empty (0 bytes)`);
    expect(serve.stderr).toMatch(/CA_STORE_REFUSED/);
    expect(serve.stderr).not.toMatch(/run `?edgetrust ca init/);
    const verify = await cli(["audit", "verify"]);
    expect(verify.code).not.toBe(0);
    expect(verify.stderr).toContain(db);
    expect(verify.stdout).not.toMatch(/ok/);
    const init = await cli(["init"]);
    expect(init.code).not.toBe(0);
    expect(init.stderr).toContain(`CA store ${db} is empty`);
    expect(statSync(db).size).toBe(0);
  });

  it("a missing store is refused with its path and not created", async () => {
    restore();
    unlinkSync(db);
    const r = await cli(["audit", "verify", "--json"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toContain(`CA store ${db} is missing`);
    expect(existsSync(db)).toBe(false);
  });

  it("a half-truncated store is refused naming its file", async () => {
    restore();
    truncateSync(db, Math.floor(statSync(db).size / 2));
    const r = await cli(["audit", "verify"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(db);
  });

  it("the intact store opens (and audit verify passes) once restored", async () => {
    restore();
    const r = await cli(["audit", "verify", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { ok: boolean; entries: number }).entries).toBeGreaterThan(2);
  });

  it("another CA's store, or an emptied schema, under this identity is refused (in-process)", async () => {
    const other = join(dir, "other.db");
    const otherStore = await CaStore.fromDb(new SqliteDb(other));
    const otherHsm = softHsm("et-ca-identity-2");
    try {
      await makeTestCa(otherStore, await otherHsm.open(), testConfig());
    } finally {
      await otherStore.close();
    }
    const config = testConfig({ sqlitePath: db, identityFile: join(dir, "ca-identity.json") });
    restore();
    copyFileSync(other, db);
    await expect(openCaStore(config)).rejects.toMatchObject({ code: "CA_STORE_REFUSED", message: expect.stringContaining(`CA store ${db} holds a different root CA`) as unknown });
    // A valid SQLite file with the schema but no CA (what the old code produced from a zero-byte file) is refused too.
    unlinkSync(db);
    await (await CaStore.fromDb(new SqliteDb(db))).close();
    await expect(openCaStore(config)).rejects.toMatchObject({ message: expect.stringContaining(`CA store ${db} holds no CA`) as unknown });
    // The configuration naming another store than the recorded one is refused before anything is opened.
    await expect(openCaStore({ ...config, sqlitePath: other })).rejects.toMatchObject({ message: expect.stringContaining("records the store") as unknown });
    restore();
    await (await openCaStore(config)).close();
    otherHsm.cleanup();
  });

  it("ca.groupCommit reaches the store it opens: 7 concurrent issued records with maxBatch 3 are written in batches of at most 3", async () => {
    restore();
    const store = await openCaStore(testConfig({ sqlitePath: db, identityFile: join(dir, "ca-identity.json"), groupCommit: { windowMs: 20, maxBatch: 3 } }));
    try {
      const issuerId = (await store.listCas("issuing"))[0]?.id ?? "";
      const record = (n: number) => ({
        serial: `7e57${n}`, issuerId, profile: "device-identity", subject: "CN=d", sans: [], deviceId: null, spkiSha256: `${n}`.padStart(64, "0"),
        fingerprintSha256: `f${n}`.padStart(64, "0"), notBefore: new Date().toISOString(), notAfter: new Date().toISOString(), certPem: "pem", replacesSerial: null,
      });
      await Promise.all(Array.from({ length: 7 }, (_, n) => store.recordIssued(record(n), "tester")));
      expect(store.issuance.stats).toMatchObject({ records: 7, largest: 3 });
      expect(store.issuance.stats.batches).toBeGreaterThanOrEqual(3);
      expect((await store.verifyAudit()).ok).toBe(true);
    } finally {
      await store.close();
    }
  });

  it("a CA that predates the identity file gets one recorded at its next start", async () => {
    const fresh = join(dir, "adopt.identity.json");
    const config = testConfig({ sqlitePath: db, identityFile: fresh });
    restore();
    await (await openCaStore(config)).close();
    expect(readIdentity(fresh)?.rootSha256).toBe(readIdentity(join(dir, "ca-identity.json"))?.rootSha256);
  });
});
