/** Durations per step (ms) and counts by code, summarised as the result table shows them. */
export class StepTimes {
  private readonly times = new Map<string, number[]>();

  add(step: string, ms: number): void {
    let a = this.times.get(step);
    if (!a) this.times.set(step, (a = []));
    a.push(ms);
  }

  summary(): Record<string, { count: number; p50Ms: number; p99Ms: number }> {
    const out: Record<string, { count: number; p50Ms: number; p99Ms: number }> = {};
    for (const [step, a] of this.times) {
      const s = [...a].sort((x, y) => x - y);
      const q = (p: number) => Math.round((s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0) * 10) / 10;
      out[step] = { count: s.length, p50Ms: q(0.5), p99Ms: q(0.99) };
    }
    return out;
  }
}

export function countInto(map: Record<string, number>, key: string, n = 1): void {
  map[key] = (map[key] ?? 0) + n;
}
