import type { Param, Row } from "../db.js";
import type { AuditEntry, CaStore, CertificateRecord } from "../store.js";
import type { FailingClaim, AppraisedClaim } from "./record.js";

export type AttestationStatus = "affirming" | "warning" | "contraindicated";
export const FLEET_STATUSES = ["affirming", "warning", "contraindicated", "unknown"] as const;
export type FleetStatus = (typeof FLEET_STATUSES)[number];

export interface FleetFilter {
  /** Latest attestation status; `unknown` = never attested. */
  status?: FleetStatus | undefined;
  /** Case-insensitive substring of the device id or common name. */
  q?: string | undefined;
  /** Only devices whose newest identity certificate expires within this many days (already expired included). */
  expiringWithinDays?: number | undefined;
  /** Only devices enrolled by this provisioning line. */
  lineId?: string | undefined;
  /** Keyset paging: device ids after this one. */
  after?: string | undefined;
  limit?: number | undefined;
}

export interface FleetRow {
  deviceId: string;
  kind: string;
  commonName: string;
  recordStatus: string;
  labels: Record<string, string>;
  lineId: string | null;
  attestation: { status: AttestationStatus; at: string; failing: FailingClaim[] } | null;
  certNotAfter: string | null;
  deployment: { id: string; version: number } | null;
  lastReport: { kind: string; at: string } | null;
}

interface FleetCounts {
  devices: number;
  byStatus: Record<FleetStatus, number>;
  expiringWithin7Days: number;
}

export interface DayCount {
  day: string;
  counts: Record<string, number>;
}

interface AttestationResultRow {
  at: string;
  status: AttestationStatus;
  claims: Record<string, AppraisedClaim>;
  reference: string;
}

interface RolloutRow {
  deploymentId: string;
  version: number;
  deviceId: string;
  outcome: "applied" | "refused";
  reasons: string[];
  at: string;
}

interface LineUsage {
  refusals: number;
  lastRefusals: AuditEntry[];
  enrolledLastHour: number;
  enrolledLastDay: number;
}

export interface AuditFilter {
  /** Exact action, or a prefix ending in `.` / `*` (e.g. `cert.`). */
  action?: string | undefined;
  /** Case-insensitive substring of the actor. */
  actor?: string | undefined;
  /** Exact target (serial, device id, line id). */
  target?: string | undefined;
  /** Keyset paging, newest first: entries before this sequence number. */
  beforeSeq?: number | undefined;
  limit?: number | undefined;
}

const s = (v: unknown): string => (v === null || v === undefined ? "" : String(v));
const sOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));
const json = <T>(v: unknown, fallback: T): T => {
  try { return v === null || v === undefined || v === "" ? fallback : (JSON.parse(String(v)) as T); } catch { return fallback; }
};
/** LIKE pattern for a literal substring (`%`, `_` and `\` escaped; used with ESCAPE '\'). */
const likeSubstring = (q: string): string => `%${q.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;

function toAudit(r: Row): AuditEntry {
  return {
    seq: Number(r.seq), at: s(r.at), actor: s(r.actor), action: s(r.action), target: s(r.target),
    details: json<Record<string, unknown>>(r.details, {}), prevHash: s(r.prev_hash), hash: s(r.hash),
  };
}

const FLEET_COLUMNS = `e.device_id, e.kind, e.common_name, e.status AS record_status,
  st.attestation_status, st.attestation_at, st.failing, st.deployment_id, st.deployment_version, st.report_kind, st.report_at,
  ie.labels, ie.line_id,
  (SELECT MAX(c.not_after) FROM certificates c WHERE c.device_id = e.device_id AND c.profile = 'device-identity' AND c.status = 'good') AS cert_not_after`;

/**
 * The read queries of the security console. Every list is keyset-paged (never OFFSET) and every filter is served by
 * an index of FLEET_MIGRATIONS, so a page costs the same with 100 or 100,000 devices.
 */
export class FleetQueries {
  constructor(private readonly store: CaStore) {}

  private get db() { return this.store.db; }

  /** The SQL and parameters of one fleet page (exposed so the benchmark can time the same query raw). */
  fleetSql(f: FleetFilter, now = Date.now()): { sql: string; params: Param[] } {
    const where: string[] = [];
    const params: Param[] = [];
    // A status filter drives the query from device_status's (status, device_id) index; otherwise from the records.
    const byStatus = f.status !== undefined && f.status !== "unknown";
    const from = byStatus
      ? "device_status st JOIN enrollments e ON e.device_id = st.device_id LEFT JOIN individual_enrollments ie ON ie.registration_id = e.device_id"
      : "enrollments e LEFT JOIN device_status st ON st.device_id = e.device_id LEFT JOIN individual_enrollments ie ON ie.registration_id = e.device_id";
    const key = byStatus ? "st.device_id" : "e.device_id";
    if (byStatus) { where.push("st.attestation_status = ?"); params.push(f.status as string); }
    if (f.status === "unknown") where.push("st.attestation_status IS NULL");
    if (f.after) { where.push(`${key} > ?`); params.push(f.after); }
    if (f.q) {
      where.push("(LOWER(e.device_id) LIKE ? ESCAPE '\\' OR LOWER(e.common_name) LIKE ? ESCAPE '\\')");
      params.push(likeSubstring(f.q), likeSubstring(f.q));
    }
    if (f.lineId) { where.push("ie.line_id = ?"); params.push(f.lineId); }
    if (f.expiringWithinDays !== undefined) {
      where.push("(SELECT MAX(c2.not_after) FROM certificates c2 WHERE c2.device_id = e.device_id AND c2.profile = 'device-identity' AND c2.status = 'good') < ?");
      params.push(new Date(now + f.expiringWithinDays * 86400e3).toISOString());
    }
    params.push(Math.min(Math.max(f.limit ?? 50, 1), 500) + 1);
    const sql = `SELECT ${FLEET_COLUMNS} FROM ${from}${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY ${key} LIMIT ?`;
    return { sql, params };
  }

  /** One page of the fleet and the cursor of the next page (undefined on the last). */
  async fleet(f: FleetFilter = {}): Promise<{ rows: FleetRow[]; next?: string }> {
    const limit = Math.min(Math.max(f.limit ?? 50, 1), 500);
    const { sql, params } = this.fleetSql({ ...f, limit });
    const raw = await this.db.query(sql, params);
    const rows = raw.slice(0, limit).map(toFleetRow);
    const last = rows[rows.length - 1];
    return raw.length > limit && last ? { rows, next: last.deviceId } : { rows };
  }

  async counts(now = Date.now()): Promise<FleetCounts> {
    const total = Number((await this.db.query<{ n: number | string }>("SELECT COUNT(*) AS n FROM enrollments"))[0]?.n ?? 0);
    const byStatus: Record<FleetStatus, number> = { affirming: 0, warning: 0, contraindicated: 0, unknown: 0 };
    // Kept by the migration-61 triggers on device_status (a GROUP BY over 100,000 status rows cost 40-180 ms a page).
    const rows = await this.db.query<{ st: string; n: number | string }>("SELECT k AS st, n FROM fleet_daily WHERE series = 'status' AND day = '-'");
    for (const r of rows) if (r.st in byStatus) byStatus[r.st as FleetStatus] = Number(r.n);
    byStatus.unknown = Math.max(0, total - byStatus.affirming - byStatus.warning - byStatus.contraindicated);
    const nowIso = new Date(now).toISOString();
    const weekIso = new Date(now + 7 * 86400e3).toISOString();
    const exp = await this.db.query<{ n: number | string }>(
      `SELECT COUNT(*) AS n FROM certificates c WHERE c.profile = 'device-identity' AND c.status = 'good' AND c.not_after >= ? AND c.not_after < ?
       AND NOT EXISTS (SELECT 1 FROM certificates d WHERE d.device_id = c.device_id AND d.profile = 'device-identity' AND d.status = 'good' AND d.not_after > c.not_after)`,
      [nowIso, weekIso]);
    return { devices: total, byStatus, expiringWithin7Days: Number(exp[0]?.n ?? 0) };
  }

  /** Attestation results per UTC day and status over the last `days` days. */
  attestationsPerDay(days = 14, now = Date.now()): Promise<DayCount[]> {
    return this.perDay("attestation", days, now);
  }

  /** Certificates issued per UTC day and profile over the last `days` days. */
  issuancePerDay(days = 14, now = Date.now()): Promise<DayCount[]> {
    return this.perDay("issuance", days, now);
  }

  /** Per-day counts from the counters the migration-61 triggers keep (a few rows, whatever the fleet size). */
  private async perDay(series: "attestation" | "issuance", days: number, now: number): Promise<DayCount[]> {
    const out = emptyDays(days, now);
    const rows = await this.db.query<{ day: string; k: string; n: number | string }>(
      "SELECT day, k, n FROM fleet_daily WHERE series = ? AND day >= ?", [series, out[0]?.day ?? ""]);
    const byDay = new Map(out.map((d) => [d.day, d]));
    for (const r of rows) {
      const d = byDay.get(r.day);
      if (d) d.counts[r.k] = (d.counts[r.k] ?? 0) + Number(r.n);
    }
    return out;
  }

  // ---- one device ----------------------------------------------------------------------------------------------

  async device(deviceId: string): Promise<FleetRow | undefined> {
    const r = (await this.db.query(
      `SELECT ${FLEET_COLUMNS} FROM enrollments e LEFT JOIN device_status st ON st.device_id = e.device_id LEFT JOIN individual_enrollments ie ON ie.registration_id = e.device_id WHERE e.device_id = ?`,
      [deviceId]))[0];
    return r ? toFleetRow(r) : undefined;
  }

  async certificates(deviceId: string, limit = 100): Promise<CertificateRecord[]> {
    return this.store.listCertificates({ deviceId, limit }).then((l) => l.sort((a, b) => b.createdAt.localeCompare(a.createdAt)));
  }

  async attestations(deviceId: string, limit = 10): Promise<AttestationResultRow[]> {
    const rows = await this.db.query("SELECT at, status, claims, reference FROM attestation_results WHERE device_id = ? ORDER BY at DESC LIMIT ?", [deviceId, limit]);
    return rows.map((r) => ({ at: s(r.at), status: s(r.status) as AttestationStatus, claims: json<Record<string, AppraisedClaim>>(r.claims, {}), reference: s(r.reference) }));
  }

  async rolloutOfDevice(deviceId: string, limit = 50): Promise<RolloutRow[]> {
    const rows = await this.db.query("SELECT * FROM deployment_rollout WHERE device_id = ? ORDER BY at DESC LIMIT ?", [deviceId, limit]);
    return rows.map(toRollout);
  }

  /** Audit entries whose target is the device or one of `serials` (its certificates), newest first. */
  async auditAbout(targets: string[], limit = 100): Promise<AuditEntry[]> {
    const t = [...new Set(targets)].slice(0, 200);
    if (t.length === 0) return [];
    const rows = await this.db.query(`SELECT * FROM audit_log WHERE target IN (${t.map(() => "?").join(", ")}) ORDER BY seq DESC LIMIT ?`, [...t, limit]);
    return rows.map(toAudit);
  }

  // ---- deployments ---------------------------------------------------------------------------------------------

  async rolloutCounts(): Promise<Array<{ deploymentId: string; version: number; applied: number; refused: number }>> {
    const rows = await this.db.query<{ deployment_id: string; version: number | string; outcome: string; n: number | string }>(
      "SELECT deployment_id, version, outcome, COUNT(*) AS n FROM deployment_rollout GROUP BY deployment_id, version, outcome");
    const out = new Map<string, { deploymentId: string; version: number; applied: number; refused: number }>();
    for (const r of rows) {
      const k = `${r.deployment_id}@${r.version}`;
      const v = out.get(k) ?? { deploymentId: r.deployment_id, version: Number(r.version), applied: 0, refused: 0 };
      if (r.outcome === "applied") v.applied = Number(r.n); else v.refused = Number(r.n);
      out.set(k, v);
    }
    return [...out.values()];
  }

  async rollout(deploymentId: string, version: number, opts: { after?: string | undefined; limit?: number } = {}): Promise<{ rows: RolloutRow[]; next?: string }> {
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 500);
    const rows = (await this.db.query(
      "SELECT * FROM deployment_rollout WHERE deployment_id = ? AND version = ? AND device_id > ? ORDER BY device_id LIMIT ?",
      [deploymentId, version, opts.after ?? "", limit + 1])).map(toRollout);
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return rows.length > limit && last ? { rows: page, next: last.deviceId } : { rows: page };
  }

  // ---- provisioning lines --------------------------------------------------------------------------------------

  async lineUsage(lineId: string, now = Date.now()): Promise<LineUsage> {
    const actor = `%(${lineId})`;
    const refusals = Number((await this.db.query<{ n: number | string }>(
      "SELECT COUNT(*) AS n FROM audit_log WHERE action IN ('enrollment.refused', 'registration.refused') AND actor LIKE ?", [actor]))[0]?.n ?? 0);
    const lastRefusals = (await this.db.query(
      "SELECT * FROM audit_log WHERE action IN ('enrollment.refused', 'registration.refused') AND actor LIKE ? ORDER BY seq DESC LIMIT 5", [actor])).map(toAudit);
    const count = async (sinceMs: number): Promise<number> => Number((await this.db.query<{ n: number | string }>(
      "SELECT COUNT(*) AS n FROM individual_enrollments WHERE line_id = ? AND created_at >= ?", [lineId, new Date(now - sinceMs).toISOString()]))[0]?.n ?? 0);
    return { refusals, lastRefusals, enrolledLastHour: await count(3600e3), enrolledLastDay: await count(86400e3) };
  }

  // ---- audit ---------------------------------------------------------------------------------------------------

  async audit(f: AuditFilter = {}): Promise<{ entries: AuditEntry[]; next?: number }> {
    const limit = Math.min(Math.max(f.limit ?? 100, 1), 5000);
    const where: string[] = [];
    const params: Param[] = [];
    if (f.action) {
      if (/[.*]$/.test(f.action)) {
        const prefix = f.action.replace(/\*$/, "");
        where.push("action >= ? AND action < ?");
        params.push(prefix, `${prefix}\uffff`);
      } else { where.push("action = ?"); params.push(f.action); }
    }
    if (f.actor) { where.push("LOWER(actor) LIKE ? ESCAPE '\\'"); params.push(likeSubstring(f.actor)); }
    if (f.target) { where.push("target = ?"); params.push(f.target); }
    if (f.beforeSeq !== undefined) { where.push("seq < ?"); params.push(f.beforeSeq); }
    params.push(limit + 1);
    const rows = (await this.db.query(`SELECT * FROM audit_log${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY seq DESC LIMIT ?`, params)).map(toAudit);
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return rows.length > limit && last ? { entries: page, next: last.seq } : { entries: page };
  }
}

function toRollout(r: Row): RolloutRow {
  return {
    deploymentId: s(r.deployment_id), version: Number(r.version), deviceId: s(r.device_id),
    outcome: s(r.outcome) as RolloutRow["outcome"], reasons: json<string[]>(r.reasons, []), at: s(r.at),
  };
}

function toFleetRow(r: Row): FleetRow {
  return {
    deviceId: s(r.device_id), kind: s(r.kind), commonName: s(r.common_name), recordStatus: s(r.record_status),
    labels: json<Record<string, string>>(r.labels, {}), lineId: sOrNull(r.line_id),
    attestation: r.attestation_status ? { status: s(r.attestation_status) as AttestationStatus, at: s(r.attestation_at), failing: json<FailingClaim[]>(r.failing, []) } : null,
    certNotAfter: sOrNull(r.cert_not_after),
    deployment: r.deployment_id ? { id: s(r.deployment_id), version: Number(r.deployment_version) } : null,
    lastReport: r.report_kind ? { kind: s(r.report_kind), at: s(r.report_at) } : null,
  };
}

function emptyDays(days: number, now: number): DayCount[] {
  const out: DayCount[] = [];
  for (let i = days - 1; i >= 0; i--) out.push({ day: new Date(now - i * 86400e3).toISOString().slice(0, 10), counts: {} });
  return out;
}

