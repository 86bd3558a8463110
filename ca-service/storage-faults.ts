import { closeSync, fsyncSync, openSync, unlinkSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { EdgeTrustError } from "../common/index.js";

/**
 * Storage faults of the CA store as precise problems instead of a generic 500: a full file system (SQLite
 * SQLITE_FULL, ENOSPC, PostgreSQL disk_full 53100) is 507 STORAGE_FULL; a read-only or failing one (SQLITE_IOERR*,
 * SQLITE_READONLY*, EROFS, EIO, PostgreSQL io_error 58030 / read_only_sql_transaction 25006) is 503
 * STORAGE_UNAVAILABLE. Each names the store and its cause; the transaction that hit it was rolled back whole.
 * A store that cannot be reached (a database restart) is 503 STORAGE_UNAVAILABLE too. Every 503 carries Retry-After.
 */
const FULL = new Set(["SQLITE_FULL", "ENOSPC", "EDQUOT", "53100"]);
const UNAVAILABLE = /^(SQLITE_IOERR|SQLITE_READONLY|SQLITE_CANTOPEN|SQLITE_CORRUPT|SQLITE_NOTADB|EROFS$|EIO$|58030$|25006$)/;

/**
 * The store's server is out of reach for now — a PostgreSQL restart or fail-over, a network cut: PostgreSQL
 * admin_shutdown / crash_shutdown / cannot_connect_now (57P01-57P03, "the database system is starting up"),
 * connection exceptions (class 08), too_many_connections (53300), and the socket errors node-postgres passes on
 * (refused, reset, timed out). The request did not complete; the same request succeeds once the server is back.
 */
const UNREACHABLE = /^(57P0[1-4]|08\d{3}|53300|ECONNREFUSED|ECONNRESET|ECONNABORTED|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN)$/;
/** node-postgres reports a connection it lost or closed by message only (no code). */
const UNREACHABLE_MESSAGE = /^(Connection terminated|Client has encountered a connection error and is not queryable|Client was closed and is not queryable|timeout exceeded when trying to connect)/;

/** Seconds a client should wait before retrying a request the store was unreachable for (sent as Retry-After). */
const STORE_RETRY_AFTER_SECONDS = 2;

function codeOf(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string") return code;
  // Node's connect to several addresses of one name fails with an AggregateError of one error per address.
  const first = (e as { errors?: unknown } | null)?.errors;
  return Array.isArray(first) ? codeOf(first[0]) : undefined;
}

function storageFault(e: unknown, store: string): EdgeTrustError | undefined {
  if (e instanceof EdgeTrustError) return undefined;
  const message = e instanceof Error ? e.message : "";
  const code = codeOf(e);
  if ((code !== undefined && UNREACHABLE.test(code)) || UNREACHABLE_MESSAGE.test(message)) {
    return new EdgeTrustError("STORAGE_UNAVAILABLE", `the CA store ${store} is unreachable (${code ? `${code}: ` : ""}${message}); the request did not complete`, {
      hint: `retry in ${STORE_RETRY_AFTER_SECONDS} s (the request is safe to repeat); if it persists, check that the database server is running and reachable`,
      retryAfterSeconds: STORE_RETRY_AFTER_SECONDS, cause: e,
    });
  }
  if (code === undefined) return undefined;
  const cause = `${code}: ${message}`;
  if (FULL.has(code)) {
    return new EdgeTrustError("STORAGE_FULL", `the CA store ${store} has no space left (${cause}); nothing was written`, { hint: "free space on the store's file system; requests succeed again as soon as it has room", cause: e });
  }
  if (UNAVAILABLE.test(code)) {
    return new EdgeTrustError("STORAGE_UNAVAILABLE", `the CA store ${store} cannot be written (${cause}); nothing was written`, { hint: "check the store's file system (read-only, I/O errors, damaged file) and the service log", retryAfterSeconds: STORE_RETRY_AFTER_SECONDS, cause: e });
  }
  return undefined;
}

/** Rethrow a storage fault as its problem; anything else unchanged. */
export function asStorageFault(e: unknown, store: string): unknown {
  return storageFault(e, store) ?? e;
}

/**
 * Can the SQLite store's directory take a write right now? Writes, fsyncs and removes 64 KiB beside the database
 * (SQLite itself may still fit a small commit into an already grown WAL while the disk is full, so this asks the
 * file system directly). Throws the storage problem when it cannot.
 */
export function probeDirectoryWritable(dbPath: string): void {
  const probe = join(dirname(dbPath), `.edgetrust-write-probe-${process.pid}`);
  let fd: number | undefined;
  try {
    fd = openSync(probe, "w", 0o600);
    writeSync(fd, Buffer.alloc(65536));
    fsyncSync(fd);
  } catch (e) {
    throw storageFault(e, dbPath) ?? new EdgeTrustError("STORAGE_UNAVAILABLE", `the CA store ${dbPath} cannot be written: ${(e as Error).message}`, { cause: e });
  } finally {
    if (fd !== undefined) closeSync(fd);
    try {
      unlinkSync(probe);
    } catch { /* nothing to remove */ }
  }
}
