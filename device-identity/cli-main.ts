/** Entry for running `edgetrust` from sources (tests' child processes): `node --import tsx device-identity/cli-main.ts device …`. */
import { main } from "../cli/index.js";

process.exitCode = await main(process.argv);
