import { describe, expect, it } from "vitest";
import { backoffDelay } from "./index.js";

describe("backoffDelay", () => {
  it("doubles from the initial delay and stops at the cap", () => {
    const o = { initialMs: 100, maxMs: 1000 };
    expect([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, o))).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(backoffDelay(10_000, o)).toBe(1000);
  });

  it("spreads by at most ±jitter", () => {
    const o = { initialMs: 1000, maxMs: 60_000, jitter: 0.2 };
    expect(backoffDelay(0, { ...o, random: () => 0 })).toBe(800);
    expect(backoffDelay(0, { ...o, random: () => 1 })).toBe(1200);
    expect(backoffDelay(2, { ...o, random: () => 0.5 })).toBe(4000);
  });
});
