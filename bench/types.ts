/** A benchmark measures one figure and a reference in the same run; the ratio is what we report and target. */
export interface BenchRow {
  /** What was measured, e.g. "ECDSA P-256 sign via hsm/ (PKCS#11)". */
  name: string;
  value: number;
  unit: string;
  reference: { name: string; value: number };
  /** value / reference.value when higher is better; reference.value / value when lower is better. */
  ratio: number;
  /** Minimum acceptable ratio. */
  target: number;
  met: boolean;
  /** Which issue or component set the target. */
  source: string;
  /** Set when the figure could not be measured here (e.g. no PostgreSQL): the reason; value and ratio are NaN. */
  skipped?: string;
  /** Set when the benchmark itself failed (an error, not a missed target): the error's first line. */
  failed?: string;
}

export interface Progress {
  step(message: string): void;
}

export interface Benchmark {
  id: string;
  description: string;
  run(progress: Progress): Promise<BenchRow[]>;
}

export function row(
  r: Omit<BenchRow, "ratio" | "met"> & { higherIsBetter?: boolean },
): BenchRow {
  const higher = r.higherIsBetter ?? true;
  const ratio = higher ? r.value / r.reference.value : r.reference.value / r.value;
  const { higherIsBetter: _h, ...rest } = r;
  return { ...rest, ratio, met: ratio >= r.target };
}

/** A row that says why it was not measured (printed as "skipped"; never counted as met or missed). */
export function skippedRow(r: Pick<BenchRow, "name" | "unit" | "target" | "source"> & { reference: string; reason: string }): BenchRow {
  return { name: r.name, value: Number.NaN, unit: r.unit, reference: { name: r.reference, value: Number.NaN }, ratio: Number.NaN, target: r.target, met: false, source: r.source, skipped: r.reason };
}
