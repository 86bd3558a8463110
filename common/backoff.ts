/**
 * The one retry delay of the project: `initialMs · 2^attempt`, capped at `maxMs`, with optional ±`jitter` (a
 * fraction) so a fleet that failed together does not retry together. `attempt` counts from 0 (the first retry).
 */
export function backoffDelay(attempt: number, o: { initialMs: number; maxMs: number; jitter?: number; random?: () => number }): number {
  // Past 2^30 every sane cap has been reached; the bound keeps the power finite.
  const base = Math.min(o.maxMs, o.initialMs * 2 ** Math.min(Math.max(0, attempt), 30));
  if (!o.jitter) return base;
  return Math.max(1, Math.round(base * (1 - o.jitter + 2 * o.jitter * (o.random ?? Math.random)())));
}
