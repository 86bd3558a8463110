import type { Migration } from "../db.js";

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
  {
    version: 61,
    name: "fleet counters (attestation results and issuance per day, devices per attestation status) kept by triggers",
    // The console's two charts read these few rows instead of grouping every row of the window: with 100,000 devices
    // attesting daily, a GROUP BY over the window was most of the fleet page's time. Triggers keep them for every
    // writer (the verifier, issuance, renewal, registration) in the writer's own transaction; the backfill counts
    // what was there before.
    sql: `
CREATE TABLE fleet_daily (
  series TEXT NOT NULL,
  day TEXT NOT NULL,
  k TEXT NOT NULL,
  n BIGINT NOT NULL,
  PRIMARY KEY (series, day, k)
);
INSERT INTO fleet_daily (series, day, k, n) SELECT 'issuance', SUBSTR(created_at, 1, 10), profile, COUNT(*) FROM certificates GROUP BY SUBSTR(created_at, 1, 10), profile;
INSERT INTO fleet_daily (series, day, k, n) SELECT 'attestation', SUBSTR(at, 1, 10), status, COUNT(*) FROM attestation_results GROUP BY SUBSTR(at, 1, 10), status;
INSERT INTO fleet_daily (series, day, k, n) SELECT 'status', '-', attestation_status, COUNT(*) FROM device_status WHERE attestation_status IS NOT NULL GROUP BY attestation_status;
`,
    sqlite: `
CREATE TRIGGER certificates_fleet_daily AFTER INSERT ON certificates BEGIN
  INSERT INTO fleet_daily (series, day, k, n) VALUES ('issuance', SUBSTR(NEW.created_at, 1, 10), NEW.profile, 1)
    ON CONFLICT (series, day, k) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER attestation_results_fleet_daily AFTER INSERT ON attestation_results BEGIN
  INSERT INTO fleet_daily (series, day, k, n) VALUES ('attestation', SUBSTR(NEW.at, 1, 10), NEW.status, 1)
    ON CONFLICT (series, day, k) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER device_status_fleet_insert AFTER INSERT ON device_status WHEN NEW.attestation_status IS NOT NULL BEGIN
  INSERT INTO fleet_daily (series, day, k, n) VALUES ('status', '-', NEW.attestation_status, 1)
    ON CONFLICT (series, day, k) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER device_status_fleet_update AFTER UPDATE OF attestation_status ON device_status
  WHEN OLD.attestation_status IS NOT NEW.attestation_status BEGIN
  UPDATE fleet_daily SET n = n - 1 WHERE series = 'status' AND day = '-' AND k = OLD.attestation_status;
  INSERT INTO fleet_daily (series, day, k, n) SELECT 'status', '-', NEW.attestation_status, 1 WHERE NEW.attestation_status IS NOT NULL
    ON CONFLICT (series, day, k) DO UPDATE SET n = n + 1;
END;
`,
    postgres: `
CREATE FUNCTION fleet_daily_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'certificates' THEN
    INSERT INTO fleet_daily (series, day, k, n) VALUES ('issuance', SUBSTR(NEW.created_at, 1, 10), NEW.profile, 1)
      ON CONFLICT (series, day, k) DO UPDATE SET n = fleet_daily.n + 1;
  ELSE
    INSERT INTO fleet_daily (series, day, k, n) VALUES ('attestation', SUBSTR(NEW.at, 1, 10), NEW.status, 1)
      ON CONFLICT (series, day, k) DO UPDATE SET n = fleet_daily.n + 1;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER certificates_fleet_daily AFTER INSERT ON certificates FOR EACH ROW EXECUTE FUNCTION fleet_daily_count();
CREATE TRIGGER attestation_results_fleet_daily AFTER INSERT ON attestation_results FOR EACH ROW EXECUTE FUNCTION fleet_daily_count();
CREATE FUNCTION fleet_status_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.attestation_status IS NOT DISTINCT FROM NEW.attestation_status THEN RETURN NEW; END IF;
  IF TG_OP = 'UPDATE' AND OLD.attestation_status IS NOT NULL THEN
    UPDATE fleet_daily SET n = n - 1 WHERE series = 'status' AND day = '-' AND k = OLD.attestation_status;
  END IF;
  IF NEW.attestation_status IS NOT NULL THEN
    INSERT INTO fleet_daily (series, day, k, n) VALUES ('status', '-', NEW.attestation_status, 1)
      ON CONFLICT (series, day, k) DO UPDATE SET n = fleet_daily.n + 1;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER device_status_fleet_count AFTER INSERT OR UPDATE ON device_status FOR EACH ROW EXECUTE FUNCTION fleet_status_count();
`,
  },
];
