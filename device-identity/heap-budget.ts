/**
 * A bound on the garbage the daemon keeps between full collections (issue 14: the identity daemon's peak RSS under
 * load). A request's objects that are still alive across two scavenges of the 1 MB semi-space (the unit runs
 * `--max-semi-space-size=1`) are promoted to the old generation, where they stay until the next full collection. V8
 * 11.3 (Node 20) starts that collection only once the old generation has grown by its minimum step, 8 MB above what
 * the last one left — whatever `--heap-growing-percent`, `--optimize-for-size` or `--max-old-space-size=32` say
 * (traced with `--trace-gc`: full collections at 18.0–20.4 MB for 12.2–12.6 MB live with each of them). Under a burst of
 * module certificates that step, and the Buffers' memory the promoted garbage holds, were ~9 MB of the daemon's peak.
 *
 * With `--expose-gc` on node's command line (the systemd unit passes it), the servers ask `check()` before each request:
 * when the heap is `budgetBytes` above what the last collection (V8's own or this one) left, a full collection runs
 * now, at most once per `minIntervalMs` (each costs ~5–10 ms with the daemon's ~12 MB live heap; the interval bounds
 * that CPU whatever the request rate). Without `--expose-gc` there is no `gc` to call and `check()` does nothing.
 *
 * The heap is read with `process.memoryUsage()` (V8's used heap, as `v8.getHeapStatistics()` gives it), not through
 * `node:v8`, whose module and the ones it loads cost ~0.2 MB of the idle daemon; it costs more per call (~60 µs under
 * `--lite-mode`, it also reads the RSS), so it is read at most every `lookIntervalMs`.
 */
export interface HeapBudgetOptions {
  /** Growth of the used heap over the last collection's result that triggers a collection. */
  budgetBytes?: number;
  /** Least time between two collections this makes. */
  minIntervalMs?: number;
  /** Least time between two reads of the heap's size. */
  lookIntervalMs?: number;
  /** The full collection (`globalThis.gc` under `--expose-gc`). */
  gc?: () => void;
  /** The used heap, bytes (V8's `used_heap_size`: `process.memoryUsage().heapUsed`). */
  usedHeap?: () => number;
  now?: () => number;
}

export const DEFAULT_HEAP_BUDGET_BYTES = 2 * 1024 * 1024;
export const DEFAULT_HEAP_BUDGET_INTERVAL_MS = 250;
export const DEFAULT_HEAP_LOOK_INTERVAL_MS = 50;

export class HeapBudget {
  /** Full collections this budget has made. */
  collections = 0;
  private readonly budget: number;
  private readonly interval: number;
  private readonly lookInterval: number;
  private readonly usedHeap: () => number;
  private readonly now: () => number;
  private base: number;
  private last = Number.NEGATIVE_INFINITY;
  private lastLook = Number.NEGATIVE_INFINITY;

  constructor(private readonly gc: () => void, o: Omit<HeapBudgetOptions, "gc"> = {}) {
    this.budget = o.budgetBytes ?? DEFAULT_HEAP_BUDGET_BYTES;
    this.interval = o.minIntervalMs ?? DEFAULT_HEAP_BUDGET_INTERVAL_MS;
    this.lookInterval = o.lookIntervalMs ?? DEFAULT_HEAP_LOOK_INTERVAL_MS;
    this.usedHeap = o.usedHeap ?? (() => process.memoryUsage().heapUsed);
    this.now = o.now ?? Date.now;
    this.base = this.usedHeap();
  }

  /** Collect now if the heap grew past the budget (and the last collection here is old enough); true if it did. */
  check(): boolean {
    const t = this.now();
    if (t - this.lastLook < this.lookInterval) return false;
    this.lastLook = t;
    const used = this.usedHeap();
    // V8 collected on its own since (or the young generation emptied): measure from there.
    if (used < this.base) this.base = used;
    if (used <= this.base + this.budget) return false;
    if (t - this.last < this.interval) return false;
    this.gc();
    this.last = t;
    this.collections++;
    // What is left is live: a live set that grew (more modules, more connections) moves the base, no collection storm.
    this.base = this.usedHeap();
    return true;
  }
}

/** The process's budget: one for all the daemon's servers, when node runs with `--expose-gc`; undefined otherwise. */
export function runtimeHeapBudget(o: Omit<HeapBudgetOptions, "gc"> = {}): HeapBudget | undefined {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (typeof gc !== "function") return undefined;
  shared ??= new HeapBudget(() => gc(), o);
  return shared;
}
let shared: HeapBudget | undefined;
