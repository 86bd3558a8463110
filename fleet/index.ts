/** fleet/: drives simulated devices through their whole life against a CA (one process or a fleet behind a balancer). */
export { simulateFleet, formatResult, measurementsFrom } from "./simulate.js";
export type { SimulateOptions, SimulationResult, ReferenceDigests } from "./simulate.js";
export type { StoreCheck, StoreTarget } from "./store-check.js";
export type { DeviceOutcome, Measurements } from "./device.js";
export { progressReporter } from "./progress.js";
