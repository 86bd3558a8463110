import { resolve } from "node:path";

/**
 * The benchmarks run from the sources (`node --import tsx bench/run.ts`, not part of the build) and measure the
 * built daemons as their systemd units run them: `dist/`, made by `make build` (which `make bench` runs first).
 */
export const REPO_ROOT = resolve(import.meta.dirname, "..");
/** The built `edgetrust` command. */
export const BUILT_BIN = resolve(REPO_ROOT, "bin/edgetrust.js");
