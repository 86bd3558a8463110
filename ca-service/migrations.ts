import { EdgeTrustError } from "../common/index.js";
import type { Db, Migration } from "./db.js";
import { ENROLLMENT_MIGRATIONS } from "./enrollment/migrations.js";
import { DEPLOYMENT_MIGRATIONS } from "./deployments/migrations.js";
import { SHARED_STATE_MIGRATIONS } from "./shared/migrations.js";
import { FLEET_MIGRATIONS } from "./fleet/migrations.js";

/**
 * Schema migrations, one list for both dialects. Each migration is plain SQL shared by SQLite and PostgreSQL, with
 * an optional per-dialect tail for what cannot be shared (triggers). Applied versions are recorded in
 * `schema_migrations`; the runner holds an exclusive lock so several `ca serve` processes can start together.
 * Never edit an applied migration: add the next one.
 */

export const GENESIS_HASH = "0".repeat(64);

export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: "cas, certificates, crls, audit log, tokens, enrollments",
    sql: `
CREATE TABLE cas (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('root', 'issuing')),
  name TEXT NOT NULL,
  parent_id TEXT REFERENCES cas(id),
  cert_pem TEXT NOT NULL,
  key_label TEXT NOT NULL,
  key_algorithm TEXT NOT NULL,
  not_before TEXT NOT NULL,
  not_after TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('active', 'retired')),
  created_at TEXT NOT NULL
);
CREATE TABLE certificates (
  serial TEXT PRIMARY KEY,
  issuer_id TEXT NOT NULL REFERENCES cas(id),
  profile TEXT NOT NULL,
  subject TEXT NOT NULL,
  sans TEXT NOT NULL,
  device_id TEXT,
  spki_sha256 TEXT NOT NULL,
  fingerprint_sha256 TEXT NOT NULL UNIQUE,
  not_before TEXT NOT NULL,
  not_after TEXT NOT NULL,
  cert_pem TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('good', 'revoked')),
  revoked_at TEXT,
  revocation_reason TEXT,
  replaces_serial TEXT,
  created_at TEXT NOT NULL
);
CREATE INDEX certificates_device ON certificates (device_id);
CREATE INDEX certificates_issuer_status ON certificates (issuer_id, status);
CREATE TABLE crls (
  issuer_id TEXT PRIMARY KEY REFERENCES cas(id),
  crl_number BIGINT NOT NULL,
  this_update TEXT,
  next_update TEXT,
  der_b64 TEXT
);
CREATE TABLE audit_log (
  seq BIGINT PRIMARY KEY,
  at TEXT NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  details TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE TABLE audit_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq BIGINT NOT NULL,
  hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '${GENESIS_HASH}');
CREATE TABLE principals (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('admin', 'auditor')),
  kind TEXT NOT NULL CHECK (kind IN ('token', 'certificate')),
  credential_sha256 TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL,
  revoked_at TEXT
);
CREATE TABLE enrollments (
  device_id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('device', 'leaf')),
  common_name TEXT NOT NULL,
  dns_names TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
`,
    sqlite: `
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
`,
    postgres: `
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
`,
  },
  ...ENROLLMENT_MIGRATIONS,
  ...DEPLOYMENT_MIGRATIONS,
  ...SHARED_STATE_MIGRATIONS,
  ...FLEET_MIGRATIONS,
];

/** Apply every migration not yet applied; returns the versions applied now. */
export async function migrate(db: Db, migrations: Migration[] = MIGRATIONS): Promise<number[]> {
  return db.exclusive("migrations", async (tx) => {
    await tx.script(
      "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    );
    const done = new Set((await tx.query<{ version: number | string }>("SELECT version FROM schema_migrations")).map((r) => Number(r.version)));
    const applied: number[] = [];
    for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
      if (done.has(m.version)) continue;
      await tx.script(m.sql);
      const tail = db.dialect === "sqlite" ? m.sqlite : m.postgres;
      if (tail) await tx.script(tail);
      await tx.run("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)", [m.version, m.name, new Date().toISOString()]);
      applied.push(m.version);
    }
    return applied;
  });
}

/**
 * Refuse a store that lacks a migration this code knows, without taking the migration lock or changing anything: a
 * `ca serve --workers` worker opens the store after its primary migrated it.
 */
export async function assertMigrated(db: Db, migrations: Migration[] = MIGRATIONS): Promise<void> {
  let done: Set<number>;
  try {
    done = new Set((await db.query<{ version: number | string }>("SELECT version FROM schema_migrations")).map((r) => Number(r.version)));
  } catch (e) {
    throw new EdgeTrustError("CA_STORE_REFUSED", `the CA store has no schema_migrations table: ${(e as Error).message}`, { hint: "start the service (or any ca command) once without --workers so that it migrates the store", cause: e });
  }
  const missing = migrations.filter((m) => !done.has(m.version)).map((m) => m.version);
  if (missing.length > 0) {
    throw new EdgeTrustError("CA_STORE_REFUSED", `the CA store lacks migrations ${missing.join(", ")}`, { hint: "the primary migrates before it starts workers: restart ca serve" });
  }
}

export async function schemaVersion(db: Db): Promise<number> {
  const rows = await db.query<{ v: number | string | null }>("SELECT MAX(version) AS v FROM schema_migrations");
  return Number(rows[0]?.v ?? 0);
}
