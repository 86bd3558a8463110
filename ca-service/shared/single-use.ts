import { EdgeTrustError } from "../../common/index.js";
import type { Db } from "../db.js";
import { FleetCounters } from "./counters.js";

interface SingleUseOptions {
  /** How long a token may be redeemed. */
  ttlMs: number;
  /** Most tokens one source (client address) may be given per `ttlMs` window, fleet-wide. */
  maxPerSource: number;
  now?: () => number;
}

interface Redeemed {
  payload: string;
  source: string;
  expiresAt: number;
  /** true when the token was found but its time had passed (it is consumed all the same). */
  expired: boolean;
}

/**
 * Single-use, expiring tokens in the store (attestation nonces, TPM credential-activation challenges): made by one
 * process, redeemed by any — `DELETE … RETURNING` hands a token to exactly one caller fleet-wide, so a replay on
 * another process finds nothing. Issuance per source is bounded with a fleet-wide counter per `ttlMs` window (so at
 * most about 2 × `maxPerSource` of one source's tokens are outstanding at once), and expired rows are swept.
 */
export class SingleUseTokens {
  private readonly counters: FleetCounters;
  private readonly now: () => number;
  private lastSweep = 0;

  constructor(private readonly db: Db, readonly kind: string, private readonly opts: SingleUseOptions) {
    this.now = opts.now ?? Date.now;
    this.counters = new FleetCounters(db, this.now);
  }

  /** Store a token `id` (already random, or a hash of one) for `source`; returns when it expires (epoch ms). */
  async put(id: string, source: string, payload: string): Promise<number> {
    const { count } = await this.counters.incr(`single-use:${this.kind}:${source}`, this.opts.ttlMs);
    if (count > this.opts.maxPerSource) {
      throw new EdgeTrustError("RATE_LIMITED", `too many outstanding ${this.kind} tokens for ${source} (at most ${this.opts.maxPerSource} per ${Math.round(this.opts.ttlMs / 1000)} s)`, { hint: "use the ones you have, or wait for them to expire" });
    }
    const t = this.now();
    const expiresAt = t + this.opts.ttlMs;
    await this.db.run("INSERT INTO single_use_tokens (kind, id, source, expires_at, payload) VALUES (?, ?, ?, ?, ?)", [this.kind, id, source, expiresAt, payload]);
    await this.sweep(t);
    return expiresAt;
  }

  /** Take the token: the first caller anywhere in the fleet gets it (even when expired, so it is gone), others nothing. */
  async take(id: string): Promise<Redeemed | undefined> {
    const rows = await this.db.query<{ payload: string; source: string; expires_at: number | string }>(
      "DELETE FROM single_use_tokens WHERE kind = ? AND id = ? RETURNING payload, source, expires_at", [this.kind, id]);
    const r = rows[0];
    if (!r) return undefined;
    const expiresAt = Number(r.expires_at);
    return { payload: r.payload, source: r.source, expiresAt, expired: expiresAt <= this.now() };
  }

  private async sweep(t: number): Promise<void> {
    if (t - this.lastSweep < 10_000) return;
    this.lastSweep = t;
    await this.db.run("DELETE FROM single_use_tokens WHERE kind = ? AND expires_at < ?", [this.kind, t - 1000]);
  }
}
