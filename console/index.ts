/** console/: the security console `ca serve` serves under /console (fleet, devices, lines, deployments, audit, policy). */
export { consolePlugin, CONTENT_SECURITY_POLICY } from "./plugin.js";
export { ConsoleConfig } from "./config.js";
export type { ConsoleDeps } from "./context.js";
export { SESSION_COOKIE } from "./session.js";
