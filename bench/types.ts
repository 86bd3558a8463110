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
