import type { Migration } from "../db.js";

/**
 * Signed deployment manifests the security team uploads (the cloud stores and serves them; it cannot sign them) and
 * what devices report back. Versions 20+ so the enrollment feature keeps its own range.
 */
export const DEPLOYMENT_MIGRATIONS: Migration[] = [
  {
    version: 20,
    name: "deployments and device reports",
    sql: `
CREATE TABLE deployments (
  deployment_id TEXT NOT NULL,
  version BIGINT NOT NULL,
  targets TEXT NOT NULL,
  payload_sha256 TEXT NOT NULL,
  jws TEXT NOT NULL,
  uploaded_by TEXT NOT NULL,
  uploaded_at TEXT NOT NULL,
  PRIMARY KEY (deployment_id, version)
);
CREATE TABLE device_reports (
  id TEXT PRIMARY KEY,
  device_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  body TEXT NOT NULL,
  received_at TEXT NOT NULL
);
CREATE INDEX device_reports_by_device ON device_reports (device_id, received_at);
`,
  },
];
