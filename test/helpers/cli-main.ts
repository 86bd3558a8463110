/**
 * The test-only entry point: `edgetrust` from TypeScript sources (tests spawn `node --import tsx test/helpers/cli-main.ts
 * <command> …`), with the fault points of `common/faults.ts` installed from the environment:
 * - `EDGETRUST_FAULT_CRASH_AFTER=<file>`: SIGKILL right after that state file is written (crash-consistency tests);
 * - `EDGETRUST_FAULT_CLOCK_OFFSET_SECONDS=<n>`: the device clock is n seconds off (clock-check tests);
 * - `EDGETRUST_FAULT_KEY_STEPS=[{"step","label","ckr","times"}]` (JSON): the token fails with that PKCS#11 return
 *   code at that step of that key's life, the first `times` times (key rotation tests).
 */
import { installFaults } from "../../common/index.js";
import { main } from "../../cli/index.js";

const crashAfter = process.env.EDGETRUST_FAULT_CRASH_AFTER;
const keySteps = JSON.parse(process.env.EDGETRUST_FAULT_KEY_STEPS ?? "[]") as { step: string; label: string; ckr: string; times: number }[];
installFaults({
  ...(keySteps.length ? {
    keyStep: (step: string, label: string) => {
      const f = keySteps.find((k) => k.step === step && k.label === label && k.times > 0);
      if (!f) return;
      f.times--;
      process.stderr.write(JSON.stringify({ level: 40, msg: "fault injected", step, label, ckr: f.ckr }) + "\n");
      throw new Error(`fault injected at ${step} of ${label}: ${f.ckr}`);
    },
  } : {}),
  ...(crashAfter ? { afterWrite: (file: string) => { if (file === crashAfter) process.kill(process.pid, "SIGKILL"); } } : {}),
  clockOffsetSeconds: Number(process.env.EDGETRUST_FAULT_CLOCK_OFFSET_SECONDS ?? "0"),
});

process.exitCode = await main(process.argv);
