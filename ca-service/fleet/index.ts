/** ca-service/fleet: read models and read queries of the fleet (the security console reads these). */
export { FLEET_MIGRATIONS } from "./migrations.js";
export { recordAttestation, recordReport, failingClaims } from "./record.js";
export type { AppraisedClaim, FailingClaim, ReportSummary } from "./record.js";
export { FleetQueries, FLEET_STATUSES } from "./queries.js";
export type { FleetFilter, FleetRow, FleetCounts, FleetStatus, AttestationStatus, DayCount, AttestationResultRow, RolloutRow, LineUsage, AuditFilter } from "./queries.js";
