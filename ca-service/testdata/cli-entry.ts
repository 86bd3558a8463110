// Runs the edgetrust CLI from TypeScript sources (tests spawn `node --import tsx` on this file).
import { main } from "../../cli/index.js";

process.exitCode = await main(process.argv);
