/**
 * Applying a deployment is all-or-nothing: each step that can fail is named, so a failure says which step of which
 * module broke, and the agent puts the device back on its last-known-good instead of leaving it half-switched.
 */

export type DeploymentStep = "pull" | "create" | "register" | "start" | "remove";

class DeploymentStepError extends Error {
  constructor(
    readonly step: DeploymentStep,
    readonly module: string,
    readonly reason: string,
  ) {
    super(`${step} ${module}: ${reason}`);
    this.name = "DeploymentStepError";
  }
}

/** Run one step of one module; its failure becomes a DeploymentStepError naming both. */
export async function atStep<T>(step: DeploymentStep, module: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof DeploymentStepError) throw e;
    throw new DeploymentStepError(step, module, (e as Error).message);
  }
}

/** What a failed apply reports: the step, the module, why — and whether the last-known-good came back whole. */
export interface DeploymentFailure {
  step: DeploymentStep | "unknown";
  module?: string;
  reason: string;
  /** The version the device is back on (0: it had none, so nothing of the failed deployment is left). */
  restoredVersion: number;
  /** Modules of the last-known-good that did not come back running (empty when the rollback is whole). */
  notRestored: string[];
}

export function describeFailure(e: unknown): Pick<DeploymentFailure, "step" | "module" | "reason"> {
  if (e instanceof DeploymentStepError) return { step: e.step, module: e.module, reason: e.reason };
  return { step: "unknown", reason: (e as Error).message };
}

export function failureLine(f: DeploymentFailure): string {
  const where = f.module ? `${f.step} ${f.module}` : f.step;
  const back = f.restoredVersion > 0 ? `back on the last-known-good version ${f.restoredVersion}` : "no deployment before it: nothing of it left running";
  const partial = f.notRestored.length > 0 ? `; not running again: ${f.notRestored.join(", ")}` : "";
  return `deployment failed at ${where}: ${f.reason}; ${back}${partial}`;
}
