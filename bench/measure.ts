/** Shared measuring loops for benchmarks: time-boxed concurrent workers, and two workloads in alternating rounds. */

interface Timed {
  ops: number;
  ms: number;
}

/** Run `worker` on `concurrency` parallel loops for `seconds`. */
export async function timed(seconds: number, concurrency: number, worker: (loop: number) => Promise<unknown>): Promise<Timed> {
  const start = performance.now();
  const end = start + seconds * 1000;
  let ops = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, loop) => {
      while (performance.now() < end) {
        await worker(loop);
        ops++;
      }
    }),
  );
  return { ops, ms: performance.now() - start };
}

/**
 * Two workloads in alternating short rounds (A B B A A B ...) so load from other processes on a shared machine falls
 * on both alike; returns each side's operations per second over all its rounds.
 */
export async function interleaved(rounds: number, a: () => Promise<Timed>, b: () => Promise<Timed>): Promise<[number, number]> {
  const tot: [Timed, Timed] = [{ ops: 0, ms: 0 }, { ops: 0, ms: 0 }];
  for (let i = 0; i < rounds; i++) {
    const order: [0 | 1, () => Promise<Timed>][] = i % 2 === 0 ? [[0, a], [1, b]] : [[1, b], [0, a]];
    for (const [j, f] of order) {
      const r = await f();
      tot[j].ops += r.ops;
      tot[j].ms += r.ms;
    }
  }
  return [tot[0].ops / (tot[0].ms / 1000), tot[1].ops / (tot[1].ms / 1000)];
}
