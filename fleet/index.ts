/** fleet/: drives simulated devices through their whole life against a CA (one process or a fleet behind a balancer). */
export { simulateFleet, formatResult, measurementsFrom } from "./simulate.js";
export type { SimulateOptions, SimulationResult, ReferenceDigests } from "./simulate.js";
export type { StoreCheck, StoreTarget } from "./store-check.js";
export type { DeviceOutcome, Measurements } from "./device.js";
export { progressReporter } from "./progress.js";
// A whole fleet on this machine (private PostgreSQL, `ca serve` processes, HAProxy): the fleet test and bench.
export { startPrivatePostgres, startCaProcess, runCli, startHaproxy, haproxyConfig, waitHealthy, localFleetUnavailable, postgresBinaries, haproxyBinary } from "./harness.js";
export type { PrivatePostgres, CaProcess, Balancer } from "./harness.js";
