/**
 * `edgetrust` as a plain script: `node cli/main.js <command> …`. The entry a `ca serve --workers` primary forks its
 * workers from when it was itself started from code given on the command line (`node -e`, as the fleet harness and the
 * bench do), where there is no script of its own to re-run.
 */
import "reflect-metadata";
import { main } from "./index.js";

process.exitCode = await main(process.argv);
