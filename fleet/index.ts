/** fleet/: drives simulated devices through their whole life against a CA (one process or a fleet behind a balancer). */
export { simulateFleet } from "./simulate.js";
// A whole fleet on this machine (private PostgreSQL, `ca serve` processes, HAProxy): the fleet test and bench.
export { startPrivatePostgres, runCli } from "./harness.js";
export { startLocalFleet, localFleetMissing, LOCAL_FLEET_REFERENCES } from "./local-fleet.js";
export type { LocalFleet } from "./local-fleet.js";
export { call } from "./http.js";
