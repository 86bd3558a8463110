import { CaStore } from "../ca-service/index.js";
import type { DeviceOutcome } from "./device.js";

export interface StoreTarget {
  databaseUrl?: string;
  schema?: string;
  sqlitePath?: string;
}

/** What the store holds for the run's devices, against what the devices were handed. */
export interface StoreCheck {
  enrollments: number;
  registrations: number;
  certificates: number;
  /** Stored certificates beyond one per (device, step): a step issued twice (e.g. a retried request whose first answer was lost). */
  duplicateCertificates: number;
  /** Serials a device was handed that the store does not hold. */
  lostCertificates: number;
  /** Stored certificates no device was handed (issued by a process killed before it could answer). */
  undeliveredCertificates: number;
  reports: number;
  duplicateReports: number;
  lostReports: number;
  auditEntries: number;
  auditChainOk: boolean;
  auditProblem?: string;
}

/** Query the CA store directly (PostgreSQL or SQLite) for the run's devices (ids starting with `prefix-`). */
export async function checkStore(target: StoreTarget, prefix: string, outcomes: DeviceOutcome[]): Promise<StoreCheck> {
  const store = await CaStore.open({ databaseUrl: target.databaseUrl ?? "", ...(target.sqlitePath ? { sqlitePath: target.sqlitePath } : {}), ...(target.schema ? { schema: target.schema } : {}) });
  try {
    const like = `${prefix}-%`;
    const n = async (sql: string): Promise<number> => Number((await store.db.query<{ n: number | string }>(sql, [like]))[0]?.n ?? 0);
    const enrollments = await n("SELECT count(*) AS n FROM individual_enrollments WHERE registration_id LIKE ?");
    const registrations = await n("SELECT count(*) AS n FROM registrations WHERE registration_id LIKE ? AND status = 'assigned'");
    const certs = await store.db.query<{ serial: string; device_id: string; replaces_serial: string | null }>(
      "SELECT serial, device_id, replaces_serial FROM certificates WHERE device_id LIKE ?", [like]);
    const steps = new Set(certs.map((c) => `${c.device_id} ${c.replaces_serial ?? ""}`));
    const stored = new Set(certs.map((c) => c.serial));
    const handed = new Set(outcomes.flatMap((o) => o.serials));
    const reports = await store.db.query<{ device_id: string; n: number | string }>(
      "SELECT device_id, count(*) AS n FROM device_reports WHERE device_id LIKE ? GROUP BY device_id", [like]);
    const perDevice = new Map(reports.map((r) => [r.device_id, Number(r.n)]));
    const v = await store.verifyAudit();
    return {
      enrollments, registrations, certificates: certs.length,
      duplicateCertificates: certs.length - steps.size,
      lostCertificates: [...handed].filter((s) => !stored.has(s)).length,
      undeliveredCertificates: [...stored].filter((s) => !handed.has(s)).length,
      reports: [...perDevice.values()].reduce((a, b) => a + b, 0),
      duplicateReports: [...perDevice.values()].reduce((a, b) => a + Math.max(0, b - 1), 0),
      lostReports: outcomes.filter((o) => o.reported && !perDevice.has(o.deviceId)).length,
      auditEntries: v.entries, auditChainOk: v.ok, ...(v.problem ? { auditProblem: `entry ${v.problem.seq}: ${v.problem.reason}` } : {}),
    };
  } finally {
    await store.close();
  }
}
