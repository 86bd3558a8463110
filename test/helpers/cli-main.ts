/**
 * The test-only entry point: `edgetrust` from TypeScript sources (tests spawn `node --import tsx test/helpers/cli-main.ts
 * <command> …`), with the fault points of `common/faults.ts` installed from the environment:
 * - `EDGETRUST_FAULT_CRASH_AFTER=<file>`: SIGKILL right after that state file is written (crash-consistency tests);
 * - `EDGETRUST_FAULT_CLOCK_OFFSET_SECONDS=<n>`: the device clock is n seconds off (clock-check tests).
 */
import { installFaults } from "../../common/index.js";
import { main } from "../../cli/index.js";

const crashAfter = process.env.EDGETRUST_FAULT_CRASH_AFTER;
installFaults({
  ...(crashAfter ? { afterWrite: (file: string) => { if (file === crashAfter) process.kill(process.pid, "SIGKILL"); } } : {}),
  clockOffsetSeconds: Number(process.env.EDGETRUST_FAULT_CLOCK_OFFSET_SECONDS ?? "0"),
});

process.exitCode = await main(process.argv);
