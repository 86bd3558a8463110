/** ca-service/fleet: read models and read queries of the fleet (the security console reads these). */
export { FleetQueries } from "./queries.js";
export type { FleetFilter, FleetRow, FleetStatus, DayCount, AuditFilter } from "./queries.js";
