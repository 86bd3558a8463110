import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { EdgeTrustError } from "../common/index.js";

/**
 * The hub's durable state in one SQLite file (WAL): the outbox of messages waiting to go upstream, and the twin of
 * each identity that connects. Synchronous (better-sqlite3): a publish is acknowledged to the client only after its
 * outbox rows are committed.
 */
export interface OutboxMessage {
  seq: number;
  route: string;
  priority: number;
  topic: string;
  payload: Buffer;
  enqueuedAt: number;
  expiresAt: number;
}

interface OutboxLimits {
  maxMessages: number;
  maxBytes: number;
}

interface Twin {
  desired: Record<string, unknown>;
  desiredVersion: number;
  reported: Record<string, unknown>;
  reportedVersion: number;
}

interface OutboxRow {
  seq: number;
  route: string;
  priority: number;
  topic: string;
  payload: Buffer;
  enqueued_at: number;
  expires_at: number;
}

interface TwinRow {
  desired: string;
  desired_version: number;
  reported: string;
  reported_version: number;
}

export class HubStore {
  readonly db: Database.Database;
  private count = 0;
  private bytes = 0;
  /** The hot statements, compiled once (better-sqlite3 compiles on every prepare()). */
  private readonly stmt: { insert: Database.Statement; next: Database.Statement; ack: Database.Statement };

  constructor(file: string, private readonly limits: OutboxLimits) {
    if (file !== ":memory:") mkdirSync(dirname(file), { recursive: true });
    this.db = new Database(file);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        route TEXT NOT NULL,
        priority INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        enqueued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS outbox_order ON outbox(priority, seq);
      CREATE TABLE IF NOT EXISTS twins (
        identity TEXT PRIMARY KEY,
        desired TEXT NOT NULL,
        desired_version INTEGER NOT NULL,
        reported TEXT NOT NULL,
        reported_version INTEGER NOT NULL
      );
    `);
    this.stmt = {
      insert: this.db.prepare("INSERT INTO outbox (route, priority, topic, payload, enqueued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)"),
      next: this.db.prepare("SELECT * FROM outbox WHERE expires_at > ? ORDER BY priority, seq LIMIT ?"),
      ack: this.db.prepare("DELETE FROM outbox WHERE seq = ? RETURNING LENGTH(payload) + LENGTH(topic) AS b"),
    };
    const s = this.db.prepare("SELECT COUNT(*) AS n, COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) AS b FROM outbox").get() as { n: number; b: number };
    this.count = s.n;
    this.bytes = s.b;
  }

  /** Messages and bytes waiting. */
  depth(): { messages: number; bytes: number } {
    return { messages: this.count, bytes: this.bytes };
  }

  /**
   * Queue messages (all or none). Refuses with HUB_OUTBOX_FULL when the cap would be passed: the oldest messages are
   * never dropped to make room (only messages past their TTL are purged first).
   */
  enqueue(items: { route: string; priority: number; ttlSeconds: number; topic: string; payload: Buffer }[], now = Date.now()): void {
    if (items.length === 0) return;
    const add = items.reduce((n, i) => n + i.payload.length + Buffer.byteLength(i.topic), 0);
    if (this.count + items.length > this.limits.maxMessages || this.bytes + add > this.limits.maxBytes) this.purgeExpired(now);
    if (this.count + items.length > this.limits.maxMessages) {
      throw new EdgeTrustError("HUB_OUTBOX_FULL", `outbox full: ${this.count} of ${this.limits.maxMessages} messages queued for upstream`, {
        hint: "upstream is unreachable or slower than the devices; the message was refused, nothing queued was dropped",
        details: { messages: this.count, maxMessages: this.limits.maxMessages },
      });
    }
    if (this.bytes + add > this.limits.maxBytes) {
      throw new EdgeTrustError("HUB_OUTBOX_FULL", `outbox full: ${this.bytes} + ${add} bytes would pass the ${this.limits.maxBytes}-byte cap`, {
        hint: "upstream is unreachable or slower than the devices; the message was refused, nothing queued was dropped",
        details: { bytes: this.bytes, maxBytes: this.limits.maxBytes },
      });
    }
    const ins = this.stmt.insert;
    this.db.transaction(() => {
      for (const i of items) ins.run(i.route, i.priority, i.topic, i.payload, now, now + i.ttlSeconds * 1000);
    })();
    this.count += items.length;
    this.bytes += add;
  }

  /** The next messages to send, highest priority (lowest number) first, then in arrival order; skips `exclude`. */
  next(limit: number, exclude: ReadonlySet<number>, now = Date.now()): OutboxMessage[] {
    const rows = this.stmt.next.all(now, limit + exclude.size) as OutboxRow[];
    return rows.filter((r) => !exclude.has(r.seq)).slice(0, limit).map((r) => ({
      seq: r.seq, route: r.route, priority: r.priority, topic: r.topic, payload: r.payload, enqueuedAt: r.enqueued_at, expiresAt: r.expires_at,
    }));
  }

  /** Remove a delivered message. */
  /** Delete several acknowledged messages in one transaction. */
  ackMany(seqs: readonly number[]): void {
    if (seqs.length === 0) return;
    this.db.transaction(() => {
      for (const seq of seqs) this.ack(seq);
    })();
  }

  ack(seq: number): void {
    const r = this.stmt.ack.get(seq) as { b: number } | undefined;
    if (r) {
      this.count -= 1;
      this.bytes -= r.b;
    }
  }

  /** Delete messages past their TTL; returns how many. */
  purgeExpired(now = Date.now()): number {
    const rows = this.db.prepare("DELETE FROM outbox WHERE expires_at <= ? RETURNING LENGTH(payload) + LENGTH(topic) AS b").all(now) as { b: number }[];
    for (const r of rows) {
      this.count -= 1;
      this.bytes -= r.b;
    }
    return rows.length;
  }

  getTwin(identity: string): Twin {
    const r = this.db.prepare("SELECT desired, desired_version, reported, reported_version FROM twins WHERE identity = ?").get(identity) as TwinRow | undefined;
    if (!r) return { desired: {}, desiredVersion: 1, reported: {}, reportedVersion: 1 };
    return { desired: JSON.parse(r.desired) as Record<string, unknown>, desiredVersion: r.desired_version, reported: JSON.parse(r.reported) as Record<string, unknown>, reportedVersion: r.reported_version };
  }

  private putTwin(identity: string, t: Twin): void {
    this.db
      .prepare(`INSERT INTO twins (identity, desired, desired_version, reported, reported_version) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT(identity) DO UPDATE SET desired = excluded.desired, desired_version = excluded.desired_version,
        reported = excluded.reported, reported_version = excluded.reported_version`)
      .run(identity, JSON.stringify(t.desired), t.desiredVersion, JSON.stringify(t.reported), t.reportedVersion);
  }

  /** Apply a JSON merge patch (RFC 7396) to reported properties; returns the new version. */
  patchReported(identity: string, patch: Record<string, unknown>): number {
    return this.db.transaction(() => {
      const t = this.getTwin(identity);
      t.reported = mergePatch(t.reported, patch);
      t.reportedVersion += 1;
      this.putTwin(identity, t);
      return t.reportedVersion;
    })();
  }

  patchDesired(identity: string, patch: Record<string, unknown>): number {
    return this.db.transaction(() => {
      const t = this.getTwin(identity);
      t.desired = mergePatch(t.desired, patch);
      t.desiredVersion += 1;
      this.putTwin(identity, t);
      return t.desiredVersion;
    })();
  }

  /**
   * A desired patch from the cloud. With the cloud's `version`, a patch at or below the twin's version is a duplicate
   * (upstream delivery is at-least-once) or stale and is ignored (`undefined`); otherwise the twin takes that version.
   */
  applyCloudDesired(identity: string, patch: Record<string, unknown>, version?: number): number | undefined {
    return this.db.transaction(() => {
      const t = this.getTwin(identity);
      if (version !== undefined && version <= t.desiredVersion) return undefined;
      t.desired = mergePatch(t.desired, patch);
      t.desiredVersion = version ?? t.desiredVersion + 1;
      this.putTwin(identity, t);
      return t.desiredVersion;
    })();
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** RFC 7396 JSON merge patch: null removes a key, objects merge, everything else replaces. */
function mergePatch(target: Record<string, unknown>, patch: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...target };
  for (const [k, v] of Object.entries(patch)) {
    if (k === "__proto__" || k === "constructor" || k === "prototype") continue;
    if (v === null) delete out[k];
    else if (isObject(v)) out[k] = mergePatch(isObject(out[k]) ? out[k] : {}, v);
    else out[k] = v;
  }
  return out;
}
