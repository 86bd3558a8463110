import type { Migration } from "../db.js";

/**
 * Enrollment API tables (issue 4): provisioning lines (API principals of factory lines), individual enrollments,
 * enrollment groups, and registrations (one per registration id, carrying its idempotency key and result).
 * Device records that issuance reads (`enrollments`) are written at registration time, not here.
 */
export const ENROLLMENT_MIGRATIONS: Migration[] = [
  {
    version: 2,
    name: "provisioning lines, individual enrollments, enrollment groups, registrations",
    sql: `
CREATE TABLE provisioning_lines (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  token_sha256 TEXT UNIQUE,
  cert_sha256 TEXT UNIQUE,
  scopes TEXT NOT NULL,
  max_enrollments INTEGER NOT NULL,
  rate_per_minute INTEGER NOT NULL,
  enrollments_created INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL,
  revoked_at TEXT
);
CREATE TABLE individual_enrollments (
  registration_id TEXT PRIMARY KEY,
  attestation TEXT NOT NULL CHECK (attestation IN ('publicKey', 'x509', 'tpm')),
  credential_sha256 TEXT NOT NULL,
  credential TEXT NOT NULL,
  profile TEXT NOT NULL CHECK (profile IN ('device-identity', 'leaf-device')),
  lifetime_days INTEGER,
  edge_ca INTEGER NOT NULL,
  dns_names TEXT NOT NULL,
  labels TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
  line_id TEXT,
  row_hash TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE INDEX individual_enrollments_credential ON individual_enrollments (credential_sha256);
CREATE INDEX individual_enrollments_line ON individual_enrollments (line_id, registration_id);
CREATE TABLE enrollment_groups (
  id TEXT PRIMARY KEY,
  attestation TEXT NOT NULL CHECK (attestation IN ('x509CA', 'symmetricKey')),
  ca_cert_pem TEXT,
  group_key TEXT,
  profile TEXT NOT NULL CHECK (profile IN ('device-identity', 'leaf-device')),
  lifetime_days INTEGER,
  edge_ca INTEGER NOT NULL,
  labels TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
  line_id TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE TABLE registrations (
  registration_id TEXT PRIMARY KEY,
  source TEXT NOT NULL,
  idempotency_key TEXT NOT NULL,
  request_sha256 TEXT NOT NULL,
  operation_id TEXT NOT NULL UNIQUE,
  status TEXT NOT NULL CHECK (status IN ('assigning', 'assigned', 'failed')),
  result TEXT,
  error TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
`,
  },
  {
    // Issue 17: group keys are wrapped by the CA key store; rows written before stay 'plain' until the wrap pass at
    // `ca serve` start (or their first use) wraps them.
    version: 170,
    name: "enrollment group keys: stored form (plain or wrapped-v1)",
    sql: "ALTER TABLE enrollment_groups ADD COLUMN group_key_form TEXT NOT NULL DEFAULT 'plain'",
  },
];
