import type { DemoResult, StepResult } from "./scenario.js";

/** One line per step: ✔/✘, the title, and what it showed (or why it failed). */
export function printStep(s: StepResult): string {
  return `${s.ok ? "✔" : "✘"} ${s.title} (${(s.ms / 1000).toFixed(1)} s)\n    ${s.detail}`;
}

export function printSummary(r: DemoResult): string {
  const w = Math.max(...r.steps.map((s) => s.id.length), 4);
  const rows = r.steps.map((s) => `  ${s.ok ? "✔" : "✘"}  ${s.id.padEnd(w)}  ${(s.ms / 1000).toFixed(1).padStart(5)} s  ${s.title}`);
  const passed = r.steps.filter((s) => s.ok).length;
  return [
    "",
    "summary",
    `  ${" "}  ${"step".padEnd(w)}  ${"time".padStart(7)}  what`,
    ...rows,
    "",
    `${passed}/${r.steps.length} steps ${r.ok ? "passed" : "passed — FAILED"} in ${(r.ms / 1000).toFixed(0)} s`,
    ...(r.leftRunning.length ? ["left running (--keep):", ...r.leftRunning.map((l) => `  ${l}`)] : ["nothing left running; state removed"]),
  ].join("\n");
}
