import { randomUUID } from "node:crypto";
import type { CaStore } from "../store.js";

type Status = "affirming" | "warning" | "contraindicated";

/** One claim of an appraisal as the verifier returns it. */
export interface AppraisedClaim {
  status: Status;
  reason: string;
  measured?: string;
  reference?: string;
}

/** A claim that did not affirm, as the fleet view keeps it beside the device. */
export interface FailingClaim {
  claim: string;
  status: Exclude<Status, "affirming">;
  reason: string;
  reference: string | null;
}

const RANK: Record<Status, number> = { affirming: 0, warning: 1, contraindicated: 2 };

function failingClaims(claims: Record<string, AppraisedClaim>): FailingClaim[] {
  return Object.entries(claims)
    .filter(([, c]) => c.status !== "affirming")
    .sort(([a, x], [b, y]) => RANK[y.status] - RANK[x.status] || a.localeCompare(b))
    .map(([claim, c]) => ({ claim, status: c.status as FailingClaim["status"], reason: c.reason, reference: c.reference ?? null }));
}

/**
 * Keep an appraisal: its history row and the device's latest status (only a newer result replaces it, so results of
 * concurrent verifications land in order). Called by the verifier route after the EAR result is signed.
 */
export async function recordAttestation(store: CaStore, r: { deviceId: string; status: Status; claims: Record<string, AppraisedClaim>; reference: string; at?: string }): Promise<void> {
  const at = r.at ?? new Date().toISOString();
  const failing = JSON.stringify(failingClaims(r.claims));
  await store.db.transaction(async (tx) => {
    await tx.run("INSERT INTO attestation_results (id, device_id, at, status, claims, reference) VALUES (?, ?, ?, ?, ?, ?)", [
      randomUUID(), r.deviceId, at, r.status, JSON.stringify(r.claims), r.reference,
    ]);
    await tx.run(
      `INSERT INTO device_status (device_id, attestation_status, attestation_at, failing) VALUES (?, ?, ?, ?)
       ON CONFLICT (device_id) DO UPDATE SET attestation_status = excluded.attestation_status, attestation_at = excluded.attestation_at, failing = excluded.failing
       WHERE device_status.attestation_at IS NULL OR device_status.attestation_at <= excluded.attestation_at`,
      [r.deviceId, r.status, at, failing],
    );
  });
}

/** What a device report says about a deployment (the fields of `POST /v1/device/reports` the fleet view keeps). */
interface ReportSummary {
  kind: string;
  deploymentId?: string | undefined;
  version?: number | undefined;
  reasons?: string[] | undefined;
}

/**
 * Keep what a device report says: the device's last report, the deployment it applied (manifest-accepted) and the
 * rollout row of that deployment version (applied, or refused with the device's reasons).
 */
export async function recordReport(store: CaStore, deviceId: string, report: ReportSummary, at = new Date().toISOString()): Promise<void> {
  const verdict = report.kind === "manifest-accepted" ? "applied" : report.kind === "manifest-rejected" ? "refused" : undefined;
  await store.db.transaction(async (tx) => {
    await tx.run(
      `INSERT INTO device_status (device_id, report_kind, report_at) VALUES (?, ?, ?)
       ON CONFLICT (device_id) DO UPDATE SET report_kind = excluded.report_kind, report_at = excluded.report_at`,
      [deviceId, report.kind, at],
    );
    if (verdict === "applied" && report.deploymentId && report.version !== undefined) {
      await tx.run("UPDATE device_status SET deployment_id = ?, deployment_version = ? WHERE device_id = ?", [report.deploymentId, report.version, deviceId]);
    }
    if (verdict && report.deploymentId && report.version !== undefined) {
      await tx.run(
        `INSERT INTO deployment_rollout (deployment_id, version, device_id, outcome, reasons, at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (deployment_id, version, device_id) DO UPDATE SET outcome = excluded.outcome, reasons = excluded.reasons, at = excluded.at`,
        [report.deploymentId, report.version, deviceId, verdict, JSON.stringify(report.reasons ?? []), at],
      );
    }
  });
}
