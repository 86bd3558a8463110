import { describe, expect, it } from "vitest";
import { EdgeTrustError } from "../common/index.js";
import { GroupCommit } from "./group-commit.js";

/**
 * The batching itself, on a writer that records what it was given (the store-level behaviour on real SQLite and
 * PostgreSQL is in store.test.ts, storage-faults.test.ts and serve-crash.test.ts).
 */
function recorder(opts: { fail?: (items: number[]) => Error | undefined; delayMs?: number } = {}) {
  const calls: number[][] = [];
  let open = 0;
  let maxOpen = 0;
  const write = async (items: number[]): Promise<string[]> => {
    calls.push([...items]);
    open++;
    maxOpen = Math.max(maxOpen, open);
    try {
      await new Promise((r) => setTimeout(r, opts.delayMs ?? 1));
      const e = opts.fail?.(items);
      if (e) throw e;
      return items.map((i) => `ok ${i}`);
    } finally {
      open--;
    }
  };
  return { calls, write, maxOpen: () => maxOpen };
}

describe("GroupCommit", () => {
  it("records submitted together go into one write; each caller gets its own result", async () => {
    const r = recorder();
    const g = new GroupCommit(r.write, { windowMs: 2 });
    expect(await Promise.all([1, 2, 3, 4, 5].map((i) => g.submit(i)))).toEqual(["ok 1", "ok 2", "ok 3", "ok 4", "ok 5"]);
    expect(r.calls).toEqual([[1, 2, 3, 4, 5]]);
    expect(g.stats).toMatchObject({ batches: 1, records: 5, largest: 5 });
  });

  it("maxBatch splits; records arriving during a write wait for it and go into the next batch; maxInFlight is never exceeded", async () => {
    for (const maxInFlight of [1, 2]) {
      const r = recorder({ delayMs: 5 });
      const g = new GroupCommit(r.write, { windowMs: 1, maxBatch: 4, maxInFlight });
      const first = Array.from({ length: 10 }, (_, i) => g.submit(i));
      await new Promise((res) => setTimeout(res, 2));
      const later = Array.from({ length: 3 }, (_, i) => g.submit(100 + i));
      await Promise.all([...first, ...later]);
      expect(r.calls.every((c) => c.length <= 4)).toBe(true);
      expect(r.calls.flat().sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100, 101, 102]);
      // Submission order is kept across batches.
      expect(r.calls.flat()).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100, 101, 102]);
      expect(r.maxOpen()).toBe(maxInFlight);
    }
  });

  it("a storage fault fails every member with that problem and retries none alone", async () => {
    const full = new EdgeTrustError("STORAGE_FULL", "the CA store is full");
    const r = recorder({ fail: () => full });
    const g = new GroupCommit(r.write);
    const out = await Promise.allSettled([1, 2, 3].map((i) => g.submit(i)));
    expect(out.map((o) => (o.status === "rejected" ? o.reason : undefined))).toEqual([full, full, full]);
    expect(r.calls).toEqual([[1, 2, 3]]);
    expect(g.stats.retriedAlone).toBe(0);
  });

  it("any other failure retries each member alone, in order: only the bad one fails, with its own error", async () => {
    const r = recorder({ fail: (items) => (items.includes(2) ? new EdgeTrustError("CONFLICT", `record ${items.length === 1 ? "2" : "of the batch"} exists`) : undefined) });
    const g = new GroupCommit(r.write);
    const out = await Promise.allSettled([1, 2, 3].map((i) => g.submit(i)));
    expect(out.map((o) => (o.status === "fulfilled" ? o.value : (o.reason as Error).message))).toEqual(["ok 1", "record 2 exists", "ok 3"]);
    expect(r.calls).toEqual([[1, 2, 3], [1], [2], [3]]);
    expect(g.stats.retriedAlone).toBe(3);
  });

  it("drain waits for everything submitted, including what is still inside its window", async () => {
    const r = recorder({ delayMs: 3 });
    const g = new GroupCommit(r.write, { windowMs: 50 });
    const results: string[] = [];
    for (const i of [1, 2]) void g.submit(i).then((v) => results.push(v));
    await g.drain();
    await Promise.resolve();
    expect(results).toEqual(["ok 1", "ok 2"]);
  });
});
