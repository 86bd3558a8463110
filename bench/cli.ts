import { Command } from "commander";
import { benchmarks } from "./index.js";
import type { BenchRow } from "./types.js";
import { action } from "../common/index.js";

function table(rows: BenchRow[]): string {
  const head = ["benchmark", "value", "reference", "ratio", "target", "met"];
  const body = rows.map((r) => r.failed ? [r.name, "-", "-", "-", "-", `FAILED: ${r.failed}`] : r.skipped ? [r.name, "-", r.reference.name, "-", `>= ${+r.target.toFixed(2)}x`, `skipped: ${r.skipped}`] : [
    r.name,
    `${fmt(r.value)} ${r.unit}`,
    `${r.reference.name}: ${fmt(r.reference.value)} ${r.unit}`,
    `${r.ratio.toFixed(2)}x`,
    `>= ${+r.target.toFixed(2)}x`,
    r.met ? "yes" : "NO",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? "").length)));
  const line = (cells: string[]) => "| " + cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ") + " |";
  return [line(head), "|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|", ...body.map(line)].join("\n");
}

function fmt(n: number): string {
  return n >= 100 ? n.toFixed(0) : n.toFixed(2);
}

export function benchCommand(): Command {
  return new Command("bench")
    .description("Run the benchmarks; each figure is a ratio against a reference measured in the same run")
    .option("--only <ids>", "comma-separated benchmark ids to run")
    .option("--json", "print the rows as JSON")
    .action(action(async (opts: { only?: string; json?: boolean }) => {
      const wanted = opts.only ? new Set(opts.only.split(",")) : undefined;
      const selected = benchmarks.filter((b) => !wanted || wanted.has(b.id));
      const rows: BenchRow[] = [];
      for (const [i, b] of selected.entries()) {
        const progress = { step: (m: string) => process.stderr.write(`[${i + 1}/${selected.length}] ${b.id}: ${m}\n`) };
        progress.step(b.description);
        try {
          rows.push(...(await b.run(progress)));
        } catch (err) {
          // One benchmark's failure must not lose the rows the others measured: it is a row of its own, and the exit code says so.
          const first = (err instanceof Error ? err.message : String(err)).split("\n")[0] ?? "";
          progress.step(`FAILED: ${first}`);
          rows.push({ name: `${b.id}: ${b.description}`, value: Number.NaN, unit: "", reference: { name: "", value: Number.NaN }, ratio: Number.NaN, target: Number.NaN, met: false, source: b.id, failed: first });
        }
      }
      if (opts.json) process.stdout.write(JSON.stringify({ rows }, null, 2) + "\n");
      else process.stdout.write(table(rows) + "\n");
      if (rows.some((r) => r.failed)) process.exitCode = 1;
    }));
}
