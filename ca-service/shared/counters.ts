import type { Db } from "../db.js";

/**
 * Fixed-window counters in the store: every process of a fleet counts into the same row, so a limit of N per window
 * is granted N times fleet-wide, not N times per process. One upsert per increment (SQLite and PostgreSQL share the
 * statement); the row is reset when a new window starts.
 */
export class FleetCounters {
  private lastSweep = 0;

  constructor(readonly db: Db, private readonly now: () => number = Date.now) {}

  /**
   * Add `n` (default one) to `key` in the window of `windowMs` that contains now; returns the count after it and the
   * ms left in the window.
   */
  async incr(key: string, windowMs: number, n = 1): Promise<{ count: number; windowStart: number; ttlMs: number }> {
    const t = this.now();
    const start = Math.floor(t / windowMs) * windowMs;
    const rows = await this.db.query<{ count: number | string; window_start: number | string }>(
      `INSERT INTO fleet_counters (key, window_start, count, expires_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (key) DO UPDATE SET
         count = CASE WHEN fleet_counters.window_start = excluded.window_start THEN fleet_counters.count + excluded.count ELSE excluded.count END,
         window_start = excluded.window_start, expires_at = excluded.expires_at
       RETURNING count, window_start`,
      [key, start, n, start + windowMs],
    );
    await this.sweep(t);
    const row = rows[0];
    return { count: Number(row?.count ?? n), windowStart: start, ttlMs: start + windowMs - t };
  }

  /** The count of `key` in the current window, without counting. */
  async read(key: string, windowMs: number): Promise<{ count: number; ttlMs: number }> {
    const t = this.now();
    const start = Math.floor(t / windowMs) * windowMs;
    const rows = await this.db.query<{ count: number | string }>("SELECT count FROM fleet_counters WHERE key = ? AND window_start = ?", [key, start]);
    return { count: Number(rows[0]?.count ?? 0), ttlMs: start + windowMs - t };
  }

  /** Drop rows of finished windows now and then (keys of one-off client addresses would otherwise pile up). */
  private async sweep(t: number): Promise<void> {
    if (t - this.lastSweep < 60_000) return;
    this.lastSweep = t;
    await this.db.run("DELETE FROM fleet_counters WHERE expires_at < ?", [t - 60_000]);
  }
}
