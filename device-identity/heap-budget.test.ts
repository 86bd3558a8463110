import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { describe, expect, it } from "vitest";
import { HeapBudget } from "./heap-budget.js";

const MB = 1024 * 1024;

/** A heap whose used size the test sets, and a clock it moves: the budget's decisions, one by one. */
function scripted(start: number) {
  const s = { used: start, t: 1_000, gcs: 0, afterGc: start };
  const budget = new HeapBudget(() => { s.gcs++; s.used = s.afterGc; }, { budgetBytes: 2 * MB, minIntervalMs: 250, lookIntervalMs: 0, usedHeap: () => s.used, now: () => s.t });
  return { s, budget };
}

describe("heap budget", () => {
  it("collects once the heap is the budget above what the last collection left, not before", () => {
    const { s, budget } = scripted(12 * MB);
    s.used = 14 * MB;
    expect(budget.check()).toBe(false);
    s.used = 14 * MB + 1;
    s.afterGc = 12.2 * MB;
    expect(budget.check()).toBe(true);
    expect(s.gcs).toBe(1);
    // Measured from what that collection left (12.2 MB), not from the start.
    s.t += 1000;
    s.used = 14.1 * MB;
    expect(budget.check()).toBe(false);
    s.used = 14.3 * MB;
    expect(budget.check()).toBe(true);
    expect(budget.collections).toBe(2);
  });

  it("follows V8's own collections: a heap that shrank since is the new base", () => {
    const { s, budget } = scripted(20 * MB);
    s.used = 12 * MB;
    expect(budget.check()).toBe(false);
    s.used = 14.5 * MB;
    expect(budget.check()).toBe(true);
  });

  it("collects at most once per interval, whatever the rate of garbage", () => {
    const { s, budget } = scripted(12 * MB);
    s.afterGc = 12 * MB;
    s.used = 15 * MB;
    expect(budget.check()).toBe(true);
    s.used = 15 * MB;
    s.t += 100;
    expect(budget.check()).toBe(false);
    s.t += 150;
    expect(budget.check()).toBe(true);
    expect(s.gcs).toBe(2);
  });

  it("reads the heap at most once per look interval (the read costs more than a request's check should)", () => {
    let reads = 0;
    let t = 0;
    let gcs = 0;
    const budget = new HeapBudget(() => { gcs++; }, { budgetBytes: 2 * MB, minIntervalMs: 0, lookIntervalMs: 50, usedHeap: () => { reads++; return reads === 1 ? 12 * MB : 15 * MB; }, now: () => t });
    expect(reads).toBe(1);
    t = 100;
    expect(budget.check()).toBe(true);
    for (let i = 0; i < 10; i++) expect(budget.check()).toBe(false);
    // One read for the check, one for the base after the collection; none for the ten checks in the same instant.
    expect(reads).toBe(3);
    t = 151;
    expect(budget.check()).toBe(false);
    expect(reads).toBe(4);
    expect(gcs).toBe(1);
  });

  it("a live set that grew moves the base: no collection at every request after it", () => {
    const { s, budget } = scripted(12 * MB);
    s.used = 20 * MB;
    s.afterGc = 19 * MB;
    expect(budget.check()).toBe(true);
    for (let i = 0; i < 10; i++) {
      s.t += 1000;
      s.used = 20 * MB;
      expect(budget.check()).toBe(false);
    }
    expect(s.gcs).toBe(1);
  });

  it("with V8's real heap and full collection: garbage over the budget is collected", () => {
    // What `--expose-gc` gives the daemon, obtained here without the flag on vitest's command line.
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    gc();
    const before = process.memoryUsage().heapUsed;
    let collected = 0;
    const budget = new HeapBudget(() => { collected++; gc(); }, { budgetBytes: 2 * MB, minIntervalMs: 0, lookIntervalMs: 0 });
    // ~8 MB of objects that live through a full collection (into the old generation), then become garbage.
    let keep: object[] | undefined = [];
    for (let i = 0; i < 100_000; i++) keep.push({ i, s: `garbage-${i}` });
    gc();
    expect(keep.length).toBe(100_000);
    keep = undefined;
    expect(budget.check()).toBe(true);
    expect(collected).toBe(1);
    expect(process.memoryUsage().heapUsed).toBeLessThan(before + 2 * MB);
  });

  it("exists only when node runs with --expose-gc (the systemd unit's flag)", () => {
    const script = `import { runtimeHeapBudget } from ${JSON.stringify(join(import.meta.dirname, "heap-budget.ts"))}; process.stdout.write(runtimeHeapBudget() ? "budget" : "none");`;
    const run = (flags: string[]): string => execFileSync(process.execPath, [...flags, "--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8" });
    expect(run([])).toBe("none");
    expect(run(["--expose-gc"])).toBe("budget");
  });
});
