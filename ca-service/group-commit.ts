import { isEdgeTrustError } from "../common/index.js";
import { GROUP_COMMIT_DEFAULTS } from "./config.js";

export interface GroupCommitOptions {
  /**
   * How long the first record of a batch waits for company before its transaction starts (ms). Records that arrive
   * while a batch is being written wait for that commit anyway and go into the next batch without a further wait.
   * 0 = the next event-loop turn.
   */
  windowMs?: number;
  /** Records per transaction at most; a full batch starts at once. */
  maxBatch?: number;
  /**
   * Batches being written at once (default 1). On PostgreSQL a second batch can overlap its round trips with the
   * first one's commit (it waits for the chain head lock only for the statement that needs it); on SQLite the write
   * lock makes more than one pointless. Two on PostgreSQL showed no gain outside the noise of the shared machine, so
   * the default stays 1.
   */
  maxInFlight?: number;
}


interface Pending<T, R> {
  item: T;
  resolve: (r: R) => void;
  reject: (e: unknown) => void;
}

/**
 * Group commit: callers `submit` one record each and are answered only after the transaction holding it committed.
 * `write` puts a whole batch into ONE transaction and returns one result per item, in order (or throws, having
 * written nothing). When a batch of several fails, a storage fault (STORAGE_FULL / STORAGE_UNAVAILABLE: nothing of
 * the store can be written) fails every member with that problem; any other error (one record violating a
 * constraint) is not allowed to fail its neighbours: each member is retried alone, in order, and gets its own result
 * or its own precise error. Batches in flight at once: `maxInFlight` (the writers of one store serialise on the
 * audit chain head, so more than a second one would only wait for the lock).
 */
export class GroupCommit<T, R> {
  private queue: Pending<T, R>[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly active = new Set<Promise<void>>();
  private readonly windowMs: number;
  private readonly maxBatch: number;
  private readonly maxInFlight: number;
  /** Batches written and the largest one (metrics, tests). */
  readonly stats = { batches: 0, records: 0, largest: 0, retriedAlone: 0 };

  constructor(private readonly write: (items: T[]) => Promise<R[]>, opts: GroupCommitOptions = {}) {
    this.windowMs = Math.max(0, opts.windowMs ?? GROUP_COMMIT_DEFAULTS.windowMs);
    this.maxBatch = Math.max(1, Math.floor(opts.maxBatch ?? GROUP_COMMIT_DEFAULTS.maxBatch));
    this.maxInFlight = Math.max(1, Math.floor(opts.maxInFlight ?? GROUP_COMMIT_DEFAULTS.maxInFlight));
  }

  submit(item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      // Every batch slot busy: a finishing batch takes this one (its callers have waited for that commit already).
      if (this.active.size >= this.maxInFlight) return;
      if (this.queue.length >= this.maxBatch) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.windowMs);
    });
  }

  /** Wait until everything submitted so far is committed or failed (before closing the store). */
  async drain(): Promise<void> {
    while (this.active.size > 0 || this.queue.length > 0) {
      if (this.active.size === 0) this.flush();
      await Promise.all(this.active);
    }
  }

  /** Start batches from the queue while a slot is free. */
  private flush(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    while (this.queue.length > 0 && this.active.size < this.maxInFlight) {
      const batch = this.queue.splice(0, this.maxBatch);
      const done: Promise<void> = this.commit(batch).finally(() => {
        this.active.delete(done);
        if (this.queue.length > 0) this.flush();
      });
      this.active.add(done);
    }
  }

  private async commit(batch: Pending<T, R>[]): Promise<void> {
    try {
      const out = await this.write(batch.map((p) => p.item));
      this.stats.batches++;
      this.stats.records += batch.length;
      this.stats.largest = Math.max(this.stats.largest, batch.length);
      batch.forEach((p, i) => p.resolve(out[i] as R));
      return;
    } catch (e) {
      if (batch.length === 1 || isEdgeTrustError(e, "STORAGE_FULL") || isEdgeTrustError(e, "STORAGE_UNAVAILABLE")) {
        for (const p of batch) p.reject(e);
        return;
      }
    }
    for (const p of batch) {
      this.stats.retriedAlone++;
      try {
        const [r] = await this.write([p.item]);
        this.stats.batches++;
        this.stats.records++;
        p.resolve(r as R);
      } catch (e) {
        p.reject(e);
      }
    }
  }
}
