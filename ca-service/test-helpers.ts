import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { CaStore } from "./store.js";
import { PostgresDb, SqliteDb } from "./db.js";

/** Test support shared by ca-service tests (not part of the public surface). */
export const DATABASE_URL = process.env.DATABASE_URL ?? "";
export const PG_SKIP_REASON = "DATABASE_URL is not set: PostgreSQL store tests skipped (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)";

if (!DATABASE_URL) process.stderr.write(`ca-service: ${PG_SKIP_REASON}\n`);

/** A unique PG schema name per test run so parallel runs never collide. */
export function uniqueSchema(prefix = "et_ca"): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString("hex")}`;
}

export interface TestStore {
  store: CaStore;
  cleanup(): Promise<void>;
}

export async function sqliteStore(): Promise<TestStore> {
  const dir = mkdtempSync(join(tmpdir(), "et-ca-"));
  const store = await CaStore.fromDb(new SqliteDb(join(dir, "ca.db")));
  return { store, cleanup: async () => { await store.close(); rmSync(dir, { recursive: true, force: true }); } };
}

export async function pgStore(schema = uniqueSchema()): Promise<TestStore> {
  const db = new PostgresDb(DATABASE_URL, schema);
  await db.init();
  const store = await CaStore.fromDb(db);
  return {
    store,
    cleanup: async () => {
      await db.dropSchema();
      await store.close();
    },
  };
}
