/**
 * Fault points: where a test injects a fault that a real part cannot produce on demand (the process dying right after
 * a state file is written, a device clock off by years). Production code only calls these; with nothing installed
 * they do nothing and read nothing. Tests install them through the test-only entry point `test/helpers/cli-main.ts`
 * (from `EDGETRUST_FAULT_*`); no production entry point installs any.
 */
interface FaultHooks {
  /** Called right after a state file named `file` is durably written. */
  afterWrite?(file: string): void;
  /** The device clock is this many seconds off. */
  clockOffsetSeconds?: number;
  /**
   * Called at a step of a key's life in the key store (`generated`: a key pair now exists on the token, before its
   * caller used it; `delete:half-destroyed`: one half of a key pair is erased, the other not yet). Throwing here is a
   * token that fails or goes away at that very moment, which a real token cannot be made to do on demand.
   */
  keyStep?(step: "generated" | "delete:half-destroyed", label: string): void;
}

const installed: FaultHooks = {};

export function installFaults(hooks: FaultHooks): void {
  Object.assign(installed, hooks);
}

export function faultAfterWrite(file: string): void {
  installed.afterWrite?.(file);
}

export function faultClockOffsetSeconds(): number {
  return installed.clockOffsetSeconds ?? 0;
}

export function faultKeyStep(step: "generated" | "delete:half-destroyed", label: string): void {
  installed.keyStep?.(step, label);
}
