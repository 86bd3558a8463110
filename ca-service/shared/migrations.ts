import type { Migration } from "../db.js";

/**
 * State every `ca serve` process of one fleet shares through the store instead of its memory (issue 13). Version
 * 130+ so this feature keeps its own range.
 */
export const SHARED_STATE_MIGRATIONS: Migration[] = [
  {
    version: 130,
    name: "fleet-shared state: single-use tokens, fixed-window counters, suppressed refusals",
    sql: `
CREATE TABLE single_use_tokens (
  kind TEXT NOT NULL,
  id TEXT NOT NULL,
  source TEXT NOT NULL,
  expires_at BIGINT NOT NULL,
  payload TEXT NOT NULL,
  PRIMARY KEY (kind, id)
);
CREATE INDEX single_use_tokens_expiry ON single_use_tokens (expires_at);
CREATE TABLE fleet_counters (
  key TEXT PRIMARY KEY,
  window_start BIGINT NOT NULL,
  count BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE INDEX fleet_counters_expiry ON fleet_counters (expires_at);
CREATE TABLE refusal_suppressed (
  window_start BIGINT NOT NULL,
  source TEXT NOT NULL,
  action TEXT NOT NULL,
  code TEXT NOT NULL,
  count BIGINT NOT NULL,
  PRIMARY KEY (window_start, source, action, code)
);
CREATE INDEX certificates_replaces ON certificates (replaces_serial);
`,
  },
];
