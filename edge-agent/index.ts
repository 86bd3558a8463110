export { createSpec, createModuleContainer, listManaged, containerName } from "./containers.js";
export { EdgeAgent } from "./agent.js";
export type { AgentReport } from "./agent.js";
export { ManagementSocketRegistrar } from "./identity-client.js";
export { CloudClient, syncDeployment } from "./cloud.js";
