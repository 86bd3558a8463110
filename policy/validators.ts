import { registerCompiledValidator } from "../common/index.js";
import { ManifestSchema, PolicySchema, TrustRootBodySchema } from "./schema.js";
import { ManifestStateSchema } from "./manifest.js";
import { manifestStateValidator, manifestValidator, policyValidator, trustRootBodyValidator } from "./schema-validators.js";

/**
 * The policy file, trust root, manifest and manifest state are checked by validators compiled at build time
 * (scripts/compiled-validators.mjs → schema-validators.ts; same verdicts, errors and defaults as compiling them here):
 * compiling them at run time was most of what the edge agent allocated applying a manifest (edge-agent README).
 */
registerCompiledValidator(PolicySchema, policyValidator);
registerCompiledValidator(TrustRootBodySchema, trustRootBodyValidator);
registerCompiledValidator(ManifestSchema, manifestValidator);
registerCompiledValidator(ManifestStateSchema, manifestStateValidator);
