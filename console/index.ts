/** console/: the security console `ca serve` serves under /console (fleet, devices, lines, deployments, audit, policy). */
export { consolePlugin } from "./plugin.js";
export { ConsoleConfig } from "./config.js";
