export { EdgeTrustError, ErrorCodes, isEdgeTrustError, toEdgeTrustError } from "./errors.js";
export type { ErrorCode, ErrorDetails, Problem } from "./errors.js";
export { createLogger, redactString } from "./log.js";
export type { Logger, LogOptions } from "./log.js";
export { loadConfig, renderDefaults } from "./config.js";
export type { LoadConfigOptions } from "./config.js";
export { parseYamlStrict, validateValue, formatLocated } from "./yaml-validate.js";
export type { Located, ParsedYaml } from "./yaml-validate.js";
export { writeFileAtomic } from "./fs.js";
