/** The enrollment API's internals that the CLI, the bench and tests use (components import ca-service/index.ts). */
export { EnrollmentStore } from "./store.js";
export { normalizeIndividual } from "./model.js";
export { parseImport } from "./import.js";
