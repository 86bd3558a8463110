import Database from "better-sqlite3";
import pg from "pg";
import { EdgeTrustError } from "../common/index.js";
import { asStorageFault, probeDirectoryWritable } from "./storage-faults.js";

/**
 * One small async database contract over two dialects. SQL is written once with `?` placeholders; the PostgreSQL
 * adapter renumbers them to `$n`. Every value we store is TEXT or INTEGER (times are ISO-8601 text, serials are hex
 * text, blobs are base64/PEM text) so the same statements work on both. Dialect differences live only here:
 * `forUpdate` (row lock in PG, nothing in SQLite where BEGIN IMMEDIATE already serialises writers) and the
 * `bigint`/`autoincrement` DDL words used by migrations.
 */
export type Row = Record<string, unknown>;
export type Param = string | number | null;

export interface Queryable {
  query<R extends Row = Row>(sql: string, params?: Param[]): Promise<R[]>;
  run(sql: string, params?: Param[]): Promise<number>;
  /** Execute a multi-statement script without parameters (migrations). */
  script(sql: string): Promise<void>;
  /**
   * One statement run once per parameter row, in order, stopping at the first error (SQLite only: the rows go
   * through one prepared statement in one synchronous call — no promise per row).
   */
  runMany?(sql: string, rows: Param[][]): Promise<void>;
}

export interface Db extends Queryable {
  readonly dialect: "sqlite" | "postgres";
  /** ` FOR UPDATE` on PostgreSQL, empty on SQLite. */
  readonly forUpdate: string;
  /** Run `fn` in one transaction (SQLite: BEGIN IMMEDIATE; PG: READ COMMITTED with explicit row locks). */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /**
   * Run `fn`'s reads in one consistent snapshot of the whole store, beside the writers (it waits for none and none
   * waits for it): SQLite, a read transaction on a second, read-only connection (WAL); PostgreSQL, a REPEATABLE READ
   * READ ONLY transaction. For reads of several statements that must agree (the audit head and the log).
   */
  snapshot<T>(fn: (q: Queryable) => Promise<T>): Promise<T>;
  /** Serialise `fn` against every other holder of `key` across processes (PG advisory lock; SQLite: the write lock). */
  exclusive<T>(key: string, fn: (tx: Queryable) => Promise<T>): Promise<T>;
  close(): Promise<void>;
  /** Throw the storage problem (STORAGE_FULL / STORAGE_UNAVAILABLE) when the store cannot take a write now (/healthz). */
  probeWritable?(): Promise<void>;
}

/** A tiny FIFO mutex: better-sqlite3 has one connection, so async transactions must not interleave on it. */
class Mutex {
  private tail: Promise<void> = Promise.resolve();
  async lock<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((r) => { release = r; });
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

export class SqliteDb implements Db {
  readonly dialect = "sqlite" as const;
  readonly forUpdate = "";
  private readonly db: Database.Database;
  private readonly mutex = new Mutex();
  private inTx = false;
  /**
   * Set by a `ca serve --workers` worker (cluster.ts): resolves when this process may take the database write lock,
   * with the function that gives it back. Without it, a transaction that finds another process holding the lock waits
   * inside SQLite's busy handler, which sleeps (1 ms and up) with the whole event loop stopped. SQLite's lock still
   * guards correctness; the gate only turns that wait into an asynchronous one.
   */
  writeGate?: () => Promise<() => void>;
  /** Prepared statements by SQL text: preparing costs more than running the small statements the CA issues. */
  private readonly statements = new Map<string, Database.Statement>();

  constructor(readonly path: string) {
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("foreign_keys = ON");
    this.db.pragma("busy_timeout = 10000");
  }

  private direct: Queryable = {
    query: async <R extends Row>(sql: string, params: Param[] = []) => this.guard(() => this.prepare(sql).all(...params) as R[]),
    run: async (sql: string, params: Param[] = []) => this.guard(() => this.prepare(sql).run(...params).changes),
    script: async (sql: string) => { this.guard(() => this.db.exec(sql)); },
    runMany: async (sql: string, rows: Param[][]) => {
      this.guard(() => {
        const st = this.prepare(sql);
        for (const r of rows) st.run(...r);
      });
    },
  };

  private prepare(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) {
      // Bounded: statements built with a variable number of rows or terms must not grow this without end.
      if (this.statements.size >= 512) this.statements.clear();
      st = this.db.prepare(sql);
      this.statements.set(sql, st);
    }
    return st;
  }

  /** SQLite errors of the file system (full, read-only, I/O) become problems naming this file (storage-faults.ts). */
  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw asStorageFault(e, this.path);
    }
  }

  async probeWritable(): Promise<void> {
    probeDirectoryWritable(this.path);
  }

  /**
   * Reads never wait for the mutex: better-sqlite3 runs each statement synchronously, so a read is atomic; during an
   * open transaction it sees that transaction's state (same connection), which is what a builder inside it needs.
   * Writes outside a transaction wait for it, so they are never folded into (and rolled back with) someone else's.
   */
  query<R extends Row = Row>(sql: string, params: Param[] = []): Promise<R[]> {
    return this.direct.query<R>(sql, params);
  }

  run(sql: string, params: Param[] = []): Promise<number> {
    if (this.inTx) return this.mutex.lock(() => this.direct.run(sql, params));
    return this.direct.run(sql, params);
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.mutex.lock(async () => {
      const release = this.writeGate ? await this.writeGate() : undefined;
      this.inTx = true;
      try {
        this.guard(() => this.db.exec("BEGIN IMMEDIATE"));
      } catch (e) {
        this.inTx = false;
        release?.();
        throw e;
      }
      try {
        const out = await fn(this.direct);
        this.guard(() => this.db.exec("COMMIT"));
        return out;
      } catch (e) {
        if (this.db.inTransaction) this.db.exec("ROLLBACK");
        throw asStorageFault(e, this.path);
      } finally {
        this.inTx = false;
        release?.();
      }
    });
  }

  script(sql: string): Promise<void> {
    return this.mutex.lock(() => this.direct.script(sql));
  }

  exclusive<T>(_key: string, fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.transaction(fn);
  }

  async snapshot<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
    // The writers' connection cannot hold a read transaction open across awaits (their BEGIN IMMEDIATE would nest).
    const reader = this.guard(() => new Database(this.path, { readonly: true, fileMustExist: true }));
    try {
      reader.pragma("busy_timeout = 10000");
      const q: Queryable = {
        query: async <R extends Row>(sql: string, params: Param[] = []) => this.guard(() => reader.prepare(sql).all(...params) as R[]),
        run: () => Promise.reject(new EdgeTrustError("INTERNAL", "a snapshot is read-only")),
        script: () => Promise.reject(new EdgeTrustError("INTERNAL", "a snapshot is read-only")),
      };
      // A deferred transaction takes its snapshot at its first read.
      this.guard(() => reader.exec("BEGIN"));
      try {
        return await fn(q);
      } finally {
        if (reader.inTransaction) reader.exec("COMMIT");
      }
    } finally {
      reader.close();
    }
  }

  async close(): Promise<void> {
    this.db.close();
  }
}

function renumber(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

export class PostgresDb implements Db {
  readonly dialect = "postgres" as const;
  readonly forUpdate = " FOR UPDATE";
  private readonly pool: pg.Pool;

  /** `schema` isolates one deployment (or one test run) inside a database: it is created and put on search_path. */
  constructor(url: string, readonly schema = "public") {
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
      throw new EdgeTrustError("INVALID_CONFIG", `PostgreSQL schema name "${schema}" is not a plain identifier`);
    }
    this.pool = new pg.Pool({ connectionString: url, max: 8, options: `-c search_path=${schema}` });
    this.pool.on("error", () => { /* idle client errors surface on the next query */ });
    // Every connection listens for its own 'error' for its whole life. pg-pool listens only while a connection is
    // idle, and a caller of pool.connect() only from its continuation: a connection released while its socket's
    // data is being parsed is handed to a waiting transaction at once, and a FATAL read in the same chunk (57P01,
    // the server terminating the backend: shutdown, failover, pg_terminate_backend) was emitted with no listener —
    // an uncaught exception that ended the process. Here it is only noted: the statement in flight (or the next)
    // fails as STORAGE_UNAVAILABLE, and the pool drops the connection when it comes back (no longer queryable).
    this.pool.on("connect", (client) => { client.on("error", () => undefined); });
  }

  async init(): Promise<void> {
    if (this.schema === "public") return;
    // Several processes may start at once: CREATE SCHEMA IF NOT EXISTS can still race on the catalog, so serialise.
    const client = await this.pool.connect();
    try {
      await client.query("BEGIN");
      await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`edgetrust-schema:${this.schema}`]);
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${this.schema}`);
      await client.query("COMMIT");
    } catch (e) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw e;
    } finally {
      client.release();
    }
  }

  private get storeName(): string {
    return `postgres schema ${this.schema}`;
  }

  /** One statement on a pooled connection; a lost or refused connection is the storage problem, not an INTERNAL. */
  private async pooled(sql: string, params?: Param[]): Promise<pg.QueryResult> {
    try {
      return await this.pool.query(sql, params);
    } catch (e) {
      throw asStorageFault(e, this.storeName);
    }
  }

  async query<R extends Row = Row>(sql: string, params: Param[] = []): Promise<R[]> {
    return (await this.pooled(renumber(sql), params)).rows as R[];
  }

  async run(sql: string, params: Param[] = []): Promise<number> {
    return (await this.pooled(renumber(sql), params)).rowCount ?? 0;
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw asStorageFault(e, this.storeName);
    }
    // A checked-out client whose connection dies between two statements (database restart) emits 'error' (the
    // constructor's listener keeps it from being uncaught); noting it here destroys the client instead of pooling it.
    // The statement in flight (or the next) fails and the transaction rolls back.
    let broken: Error | undefined;
    const onError = (e: Error) => { broken = e; };
    client.on("error", onError);
    const tx: Queryable = {
      query: async <R extends Row>(sql: string, params: Param[] = []) => (await client.query(renumber(sql), params)).rows as R[],
      run: async (sql: string, params: Param[] = []) => (await client.query(renumber(sql), params)).rowCount ?? 0,
      script: async (sql: string) => { await client.query(sql); },
    };
    try {
      await client.query("BEGIN");
      const out = await fn(tx);
      await client.query("COMMIT");
      return out;
    } catch (e) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw asStorageFault(e, this.storeName);
    } finally {
      client.off("error", onError);
      client.release(broken);
    }
  }

  async script(sql: string): Promise<void> {
    await this.pooled(sql);
  }

  async snapshot<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw asStorageFault(e, this.storeName);
    }
    let broken: Error | undefined;
    const onError = (e: Error) => { broken = e; };
    client.on("error", onError);
    const q: Queryable = {
      query: async <R extends Row>(sql: string, params: Param[] = []) => (await client.query(renumber(sql), params)).rows as R[],
      run: () => Promise.reject(new EdgeTrustError("INTERNAL", "a snapshot is read-only")),
      script: () => Promise.reject(new EdgeTrustError("INTERNAL", "a snapshot is read-only")),
    };
    try {
      await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
      const out = await fn(q);
      await client.query("COMMIT");
      return out;
    } catch (e) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw asStorageFault(e, this.storeName);
    } finally {
      client.off("error", onError);
      client.release(broken);
    }
  }

  exclusive<T>(key: string, fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.transaction(async (tx) => {
      await tx.query("SELECT pg_advisory_xact_lock(hashtext(?))", [`${this.schema}:${key}`]);
      return fn(tx);
    });
  }

  /** Drop the schema (tests). */
  async dropSchema(): Promise<void> {
    if (this.schema !== "public") await this.pool.query(`DROP SCHEMA IF EXISTS ${this.schema} CASCADE`);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

export interface OpenDbOptions {
  /** `postgres://...` / `postgresql://...` for PostgreSQL; empty for SQLite at `sqlitePath`. */
  databaseUrl?: string;
  sqlitePath?: string;
  /** PostgreSQL schema (default `public`). */
  schema?: string;
}

export async function openDb(opts: OpenDbOptions): Promise<Db> {
  const url = opts.databaseUrl ?? "";
  if (/^postgres(ql)?:\/\//.test(url)) {
    const db = new PostgresDb(url, opts.schema ?? "public");
    try {
      await db.init();
    } catch (e) {
      await db.close();
      throw new EdgeTrustError("UNAVAILABLE", `cannot reach PostgreSQL: ${(e as Error).message}`, {
        hint: "check ca.databaseUrl and that the server is running",
        cause: e,
      });
    }
    return db;
  }
  if (url !== "") throw new EdgeTrustError("INVALID_CONFIG", `unsupported database URL scheme in "${url.split(":")[0]}:"`, { hint: "use postgres://... or leave it empty for SQLite" });
  if (!opts.sqlitePath) throw new EdgeTrustError("INVALID_CONFIG", "no database configured", { hint: "set ca.databaseUrl or ca.sqlitePath" });
  return new SqliteDb(opts.sqlitePath);
}

/**
 * One schema migration (the lists live beside their feature: migrations.ts, enrollment/, deployments/, fleet/): plain SQL
 * shared by SQLite and PostgreSQL, with an optional per-dialect tail for what cannot be shared (triggers).
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
  sqlite?: string;
  postgres?: string;
}
