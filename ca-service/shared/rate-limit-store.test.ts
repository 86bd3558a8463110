import { describe, expect, it } from "vitest";
import { DATABASE_URL, pgStore, sqliteStore, type TestStore } from "../test-helpers.js";
import { FleetCounters } from "./counters.js";
import { LEASE_MAX, leasingCounters, type WindowCounters } from "./rate-limit-store.js";

// An hour's window: the test's increments never straddle two windows.
const HOUR = 3_600_000;

const dialects: [string, () => Promise<TestStore>][] = [["SQLite", sqliteStore]];
if (DATABASE_URL) dialects.push(["PostgreSQL", () => pgStore()]);

describe.each(dialects)("rate-limit counters (%s)", (_name, open) => {
  it("increments made while one is on its way share the next store update; every caller gets a count of its own", async () => {
    const ts = await open();
    try {
      const fleet = new FleetCounters(ts.store.db);
      let updates = 0;
      const store: WindowCounters = { incr: (k, w, n) => { updates++; return fleet.incr(k, w, n); }, read: (k, w) => fleet.read(k, w) };
      const counters = leasingCounters(store);
      const got = await Promise.all(Array.from({ length: 20 }, () => counters.incr("rl:test:client", HOUR)));
      // The first went alone; the 19 that arrived while it was on its way went together.
      expect(updates).toBe(2);
      // 1..20 each once: a limit of N is granted exactly N times.
      expect(got.map((g) => g.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      expect((await fleet.read("rl:test:client", HOUR)).count).toBe(20);
      // Another key is counted on its own.
      expect((await counters.incr("rl:test:other", HOUR)).count).toBe(1);
    } finally {
      await ts.cleanup();
    }
  });

  it("far from the limit an update leases counts ahead: later requests are counted without one, and no value is handed out twice", async () => {
    const ts = await open();
    try {
      const fleet = new FleetCounters(ts.store.db);
      let updates = 0;
      const store: WindowCounters = { incr: (k, w, n) => { updates++; return fleet.incr(k, w, n); }, read: (k, w) => fleet.read(k, w) };
      const counters = leasingCounters(store);
      const got = await Promise.all(Array.from({ length: 20 }, () => counters.incr("rl:test:lease", HOUR, 1, 100_000)));
      expect(updates).toBe(1);
      expect(got.map((g) => g.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      // The shared counter holds the first request's count and the whole lease, so other processes count past it.
      expect((await fleet.read("rl:test:lease", HOUR)).count).toBe(1 + LEASE_MAX);
      for (let i = 0; i < 1 + LEASE_MAX - 20; i++) await counters.incr("rl:test:lease", HOUR, 1, 100_000);
      expect(updates).toBe(1);
      expect((await counters.incr("rl:test:lease", HOUR, 1, 100_000)).count).toBe(LEASE_MAX + 2);
      expect(updates).toBe(2);
    } finally {
      await ts.cleanup();
    }
  });

  it("two processes leasing from one counter never grant more than the limit, and near it they lease nothing", async () => {
    const ts = await open();
    try {
      const fleet = new FleetCounters(ts.store.db);
      const a = leasingCounters(fleet);
      const b = leasingCounters(fleet);
      const max = 400;
      const counts: number[] = [];
      // A skewed, seeded split of 1,000 requests between the two processes.
      let seed = 7;
      for (let i = 0; i < 1000; i++) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        counts.push((await (seed % 3 === 0 ? a : b).incr("rl:test:two", HOUR, 1, max)).count);
      }
      expect(new Set(counts).size).toBe(counts.length);
      const granted = counts.filter((c) => c <= max).length;
      expect(granted).toBeLessThanOrEqual(max);
      // What is lost is bounded by the leases outstanding: at most 1/16 of what was left when each was taken.
      expect(granted).toBeGreaterThanOrEqual(max - 2 * Math.floor(max / 16));
      // A limit under 16 leases nothing: exactly N granted however requests are split.
      const c = leasingCounters(fleet);
      const d = leasingCounters(fleet);
      const small = await Promise.all(Array.from({ length: 30 }, (_, i) => (i % 2 ? c : d).incr("rl:test:small", HOUR, 1, 12)));
      expect(small.filter((r) => r.count <= 12)).toHaveLength(12);
    } finally {
      await ts.cleanup();
    }
  });
});
