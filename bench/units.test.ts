/**
 * The memory rows compare a daemon's peak RSS with a bare node's: both must be the measured process's own peak.
 * Linux's ru_maxrss (process.resourceUsage().maxRSS) survives fork+exec, so a child measured that way reports its
 * parent's high-water mark — the agent row once printed the same figure for the agent and for a bare node.
 */
import { describe, expect, it } from "vitest";
import { peakRssMbOfRun } from "./units.js";

describe("peakRssMbOfRun", () => {
  it("reports the child's own peak, not the high-water mark of the process that started it", async () => {
    // Make this process's own peak far above a bare node's (touched pages, so they are resident).
    const ballast = Buffer.alloc(300 * 1024 * 1024, 1);
    expect(process.memoryUsage().rss / 1024 / 1024).toBeGreaterThan(300);
    const bare = await peakRssMbOfRun({});
    expect(bare).toBeGreaterThan(10);
    expect(bare).toBeLessThan(150);
    expect(ballast.length).toBeGreaterThan(0);
  });

  it("sees what the command itself allocates", async () => {
    const bare = await peakRssMbOfRun({});
    const script = "data:text/javascript," + encodeURIComponent("globalThis.held = Buffer.alloc(120 * 1024 * 1024, 1);");
    const allocating = await peakRssMbOfRun({ nodeFlags: ["--import", script] });
    expect(allocating).toBeGreaterThan(bare + 100);
  });
});
