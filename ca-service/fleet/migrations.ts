import type { Migration } from "../migrations.js";

/**
 * Read models of the fleet (issue 16, the security console): the latest attestation result and deployment outcome per
 * device, kept up to date when a result or report arrives so that a page of 100,000 devices is one indexed join and
 * never a scan of history; the history of attestation results; console sign-in sessions; indexes the console's
 * filters use. Versions 60+ so the feature keeps its own range.
 */
export const FLEET_MIGRATIONS: Migration[] = [
  {
    version: 60,
    name: "fleet read models: attestation results, device status, rollout, console sessions, console indexes",
    sql: `
CREATE TABLE attestation_results (
  id TEXT PRIMARY KEY,
  device_id TEXT NOT NULL,
  at TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('affirming', 'warning', 'contraindicated')),
  claims TEXT NOT NULL,
  reference TEXT NOT NULL
);
CREATE INDEX attestation_results_device ON attestation_results (device_id, at);
CREATE INDEX attestation_results_at ON attestation_results (at);
CREATE TABLE device_status (
  device_id TEXT PRIMARY KEY,
  attestation_status TEXT,
  attestation_at TEXT,
  failing TEXT NOT NULL DEFAULT '[]',
  deployment_id TEXT,
  deployment_version BIGINT,
  report_kind TEXT,
  report_at TEXT
);
CREATE INDEX device_status_attestation ON device_status (attestation_status, device_id);
CREATE TABLE deployment_rollout (
  deployment_id TEXT NOT NULL,
  version BIGINT NOT NULL,
  device_id TEXT NOT NULL,
  outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'refused')),
  reasons TEXT NOT NULL,
  at TEXT NOT NULL,
  PRIMARY KEY (deployment_id, version, device_id)
);
CREATE INDEX deployment_rollout_device ON deployment_rollout (device_id, at);
CREATE TABLE console_sessions (
  id_sha256 TEXT PRIMARY KEY,
  principal_id TEXT NOT NULL,
  csrf_token TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
CREATE INDEX audit_log_target ON audit_log (target, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX certificates_created ON certificates (created_at);
CREATE INDEX certificates_device_profile ON certificates (device_id, profile, status, not_after);
CREATE INDEX certificates_expiry ON certificates (profile, status, not_after);
CREATE INDEX individual_enrollments_line_created ON individual_enrollments (line_id, created_at);
`,
  },
];
