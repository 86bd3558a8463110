import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { EdgeTrustError } from "../common/index.js";
import { openDb, type Db, type OpenDbOptions, type Param, type Queryable, type Row } from "./db.js";
import { GroupCommit, type GroupCommitOptions } from "./group-commit.js";
import { GENESIS_HASH, assertMigrated, migrate } from "./migrations.js";

/** RFC 5280 §5.3.1 CRLReason names (value 7 is unused by the RFC). */
export const REVOCATION_REASONS = [
  "unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
  "cessationOfOperation", "certificateHold", "removeFromCRL", "privilegeWithdrawn", "aACompromise",
] as const;
export type RevocationReason = (typeof REVOCATION_REASONS)[number];
export const REVOCATION_REASON_CODES: Record<RevocationReason, number> = {
  unspecified: 0, keyCompromise: 1, cACompromise: 2, affiliationChanged: 3, superseded: 4,
  cessationOfOperation: 5, certificateHold: 6, removeFromCRL: 8, privilegeWithdrawn: 9, aACompromise: 10,
};

export type Role = "admin" | "auditor";

export interface CaRecord {
  id: string;
  kind: "root" | "issuing";
  name: string;
  parentId: string | null;
  certPem: string;
  keyLabel: string;
  keyAlgorithm: string;
  notBefore: string;
  notAfter: string;
  status: "active" | "retired";
  createdAt: string;
}

export interface CertificateRecord {
  serial: string;
  issuerId: string;
  profile: string;
  subject: string;
  sans: string[];
  deviceId: string | null;
  spkiSha256: string;
  fingerprintSha256: string;
  notBefore: string;
  notAfter: string;
  certPem: string;
  status: "good" | "revoked";
  revokedAt: string | null;
  revocationReason: RevocationReason | null;
  replacesSerial: string | null;
  createdAt: string;
}

interface EnrollmentRecord {
  deviceId: string;
  kind: "device" | "leaf";
  commonName: string;
  dnsNames: string[];
  status: "enabled" | "disabled";
  createdAt: string;
  updatedAt: string;
}

export interface Principal {
  id: string;
  name: string;
  role: Role;
  kind: "token" | "certificate";
}

export interface AuditEntry {
  seq: number;
  at: string;
  actor: string;
  action: string;
  target: string;
  details: Record<string, unknown>;
  prevHash: string;
  hash: string;
}

/** What `upsertEnrollment` writes. */
export type EnrollmentWrite = Pick<EnrollmentRecord, "deviceId" | "kind" | "commonName" | "dnsNames"> & { status?: EnrollmentRecord["status"] };

export interface AuditInput {
  actor: string;
  action: string;
  target: string;
  details?: Record<string, unknown>;
}

interface AuditVerifyResult {
  ok: boolean;
  entries: number;
  headSeq: number;
  /** The first problem found, with the sequence number where the chain breaks. */
  problem?: { seq: number; reason: string };
}

/** sha256 over a canonical array of the stored fields: the stored `details` text is hashed as stored. */
export function auditHash(seq: number, at: string, actor: string, action: string, target: string, details: string, prevHash: string): string {
  return createHash("sha256").update(JSON.stringify([seq, at, actor, action, target, details, prevHash])).digest("hex");
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

const str = (v: unknown): string => (v === null || v === undefined ? "" : String(v));
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

function toCa(r: Row): CaRecord {
  return {
    id: str(r.id), kind: str(r.kind) as CaRecord["kind"], name: str(r.name), parentId: strOrNull(r.parent_id),
    certPem: str(r.cert_pem), keyLabel: str(r.key_label), keyAlgorithm: str(r.key_algorithm), notBefore: str(r.not_before),
    notAfter: str(r.not_after), status: str(r.status) as CaRecord["status"], createdAt: str(r.created_at),
  };
}

function toCert(r: Row): CertificateRecord {
  return {
    serial: str(r.serial), issuerId: str(r.issuer_id), profile: str(r.profile), subject: str(r.subject),
    sans: JSON.parse(str(r.sans) || "[]") as string[], deviceId: strOrNull(r.device_id), spkiSha256: str(r.spki_sha256),
    fingerprintSha256: str(r.fingerprint_sha256), notBefore: str(r.not_before), notAfter: str(r.not_after),
    certPem: str(r.cert_pem), status: str(r.status) as CertificateRecord["status"], revokedAt: strOrNull(r.revoked_at),
    revocationReason: strOrNull(r.revocation_reason) as RevocationReason | null, replacesSerial: strOrNull(r.replaces_serial),
    createdAt: str(r.created_at),
  };
}

function toEnrollment(r: Row): EnrollmentRecord {
  return {
    deviceId: str(r.device_id), kind: str(r.kind) as EnrollmentRecord["kind"], commonName: str(r.common_name),
    dnsNames: JSON.parse(str(r.dns_names) || "[]") as string[], status: str(r.status) as EnrollmentRecord["status"],
    createdAt: str(r.created_at), updatedAt: str(r.updated_at),
  };
}

export type NewCertificate = Omit<CertificateRecord, "status" | "revokedAt" | "revocationReason" | "createdAt">;

interface CaStoreOptions {
  /** Group commit of issued certificates (ca-service/README.md "Group commit"). */
  groupCommit?: GroupCommitOptions;
  /** false: do not migrate, refuse a store lacking a migration (a `ca serve --workers` worker: its primary migrated). */
  migrate?: boolean;
}

interface IssuedWrite {
  cert: NewCertificate;
  actor: string;
  action: string;
  createdAt: string;
}

const CERT_COLUMNS = "serial, issuer_id, profile, subject, sans, device_id, spki_sha256, fingerprint_sha256, not_before, not_after, cert_pem, status, replaces_serial, created_at";
const CERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'good', ?, ?)";
const AUDIT_COLUMNS = "seq, at, actor, action, target, details, prev_hash, hash";
const AUDIT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)";
/** Rows per multi-row INSERT on PostgreSQL (13 parameters a certificate: far below the 65,535 limit). */
const PG_ROWS_PER_INSERT = 128;
/** Device ids per enrollment read on PostgreSQL (a burst of issuances for many devices). */
const ENROLLMENT_READS_PER_QUERY = 500;
/** Batches up to this size go into one PostgreSQL statement (21 parameters a certificate with its audit entry). */
const PG_ROWS_PER_STATEMENT = 1024;

/**
 * The CA's durable state: CAs, every issued certificate, revocations, CRL numbers, admin principals, enrollment
 * records, and the append-only hash-chained audit log. Every state change and its audit entry commit together.
 */
export class CaStore {
  /** Issued certificates waiting for (or in) their group-commit transaction. */
  readonly issuance: GroupCommit<IssuedWrite, void>;

  /**
   * PostgreSQL: the audit chain head as this process last saw it (written or read). A batch chained from it is
   * written in one statement that moves the head only if it is still there (`writeIssuedOptimistic`); undefined
   * until the first batch has read the head under its lock.
   */
  private knownHead: { seq: number; hash: string } | undefined;
  /** PostgreSQL: enrollment reads waiting for the next turn of the event loop, by device id (`getEnrollment`). */
  private enrollmentReads = new Map<string, { resolve: (r: EnrollmentRecord | undefined) => void; reject: (e: unknown) => void }[]>();

  private constructor(readonly db: Db, opts: CaStoreOptions = {}) {
    this.issuance = new GroupCommit((batch) => this.writeIssued(batch), opts.groupCommit);
  }

  static async open(opts: OpenDbOptions & CaStoreOptions): Promise<CaStore> {
    const db = await openDb(opts);
    try {
      if (opts.migrate === false) await assertMigrated(db);
      else await migrate(db);
    } catch (e) {
      await db.close();
      throw e;
    }
    return new CaStore(db, opts);
  }

  static async fromDb(db: Db, opts: CaStoreOptions = {}): Promise<CaStore> {
    await migrate(db);
    return new CaStore(db, opts);
  }

  get dialect(): Db["dialect"] {
    return this.db.dialect;
  }

  /** Commits what is queued for group commit first: closing never drops a certificate a caller is waiting for. */
  async close(): Promise<void> {
    await this.issuance.drain();
    await this.db.close();
  }

  // ---- audit ------------------------------------------------------------------------------------------------

  /**
   * Append to the chain inside the caller's transaction. The chain head row is locked (PG: SELECT ... FOR UPDATE;
   * SQLite: the transaction holds the write lock), so concurrent appenders from any number of processes queue up and
   * every entry links to exactly one predecessor.
   */
  async appendAudit(tx: Queryable, input: AuditInput): Promise<AuditEntry> {
    return (await this.appendAuditMany(tx, [input]))[0] as AuditEntry;
  }

  /**
   * Append several entries, in order, with one read and one update of the chain head (group commit). The same lock
   * as `appendAudit`: the head is taken inside the caller's transaction, so on PostgreSQL processes sharing the
   * chain queue on it and the batch's entries are consecutive.
   */
  async appendAuditMany(tx: Queryable, inputs: AuditInput[]): Promise<AuditEntry[]> {
    if (inputs.length === 0) return [];
    const chained = this.chain(await this.lockHead(tx), inputs);
    await this.insertRows(tx, "audit_log", AUDIT_COLUMNS, AUDIT_ROW, chained.rows);
    await tx.run("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", [chained.seq, chained.hash]);
    return chained.entries;
  }

  /** The chain head, locked until the caller's transaction ends (PG: FOR UPDATE; SQLite: the write lock). */
  private async lockHead(tx: Queryable): Promise<{ seq: number; hash: string }> {
    const head = (await tx.query<{ seq: number | string; hash: string }>(`SELECT seq, hash FROM audit_head WHERE id = 1${this.db.forUpdate}`))[0];
    if (!head) throw new EdgeTrustError("INTERNAL", "audit chain head row is missing");
    return { seq: Number(head.seq), hash: head.hash };
  }

  /** Entries following `head`, each linked to the one before: their rows, and the new head. */
  private chain(head: { seq: number; hash: string }, inputs: AuditInput[]): { rows: Param[][]; entries: AuditEntry[]; seq: number; hash: string } {
    let seq = head.seq;
    let prevHash = head.hash;
    const at = new Date().toISOString();
    const entries: AuditEntry[] = [];
    const rows: Param[][] = [];
    for (const input of inputs) {
      seq++;
      const details = JSON.stringify(input.details ?? {});
      const hash = auditHash(seq, at, input.actor, input.action, input.target, details, prevHash);
      rows.push([seq, at, input.actor, input.action, input.target, details, prevHash, hash]);
      entries.push({ seq, at, actor: input.actor, action: input.action, target: input.target, details: input.details ?? {}, prevHash, hash });
      prevHash = hash;
    }
    return { rows, entries, seq, hash: prevHash };
  }

  /**
   * INSERT several rows: one statement per row on SQLite (a prepared statement run row by row in one synchronous call;
   * a 64-row VALUES statement measured slower in better-sqlite3), multi-row
   * statements on PostgreSQL (one round trip per PG_ROWS_PER_INSERT rows).
   */
  private async insertRows(tx: Queryable, table: string, columns: string, rowSql: string, rows: Param[][]): Promise<void> {
    if (this.db.dialect === "sqlite") {
      const sql = `INSERT INTO ${table} (${columns}) VALUES ${rowSql}`;
      if (tx.runMany) return tx.runMany(sql, rows);
      for (const r of rows) await tx.run(sql, r);
      return;
    }
    for (let i = 0; i < rows.length; i += PG_ROWS_PER_INSERT) {
      const chunk = rows.slice(i, i + PG_ROWS_PER_INSERT);
      await tx.run(`INSERT INTO ${table} (${columns}) VALUES ${chunk.map(() => rowSql).join(", ")}`, chunk.flat());
    }
  }

  /** Record an admin action that changes nothing else (token created, CA rolled over, ...). */
  audit(input: AuditInput): Promise<AuditEntry> {
    return this.db.transaction((tx) => this.appendAudit(tx, input));
  }

  async listAudit(opts: { afterSeq?: number; limit?: number } = {}): Promise<AuditEntry[]> {
    const rows = await this.db.query("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", [opts.afterSeq ?? 0, opts.limit ?? 1000]);
    return rows.map((r) => ({
      seq: Number(r.seq), at: str(r.at), actor: str(r.actor), action: str(r.action), target: str(r.target),
      details: JSON.parse(str(r.details) || "{}") as Record<string, unknown>, prevHash: str(r.prev_hash), hash: str(r.hash),
    }));
  }

  /**
   * Walk the whole chain in storage order. Detects an edited row (hash mismatch), a deleted row (sequence gap and
   * broken link), reordered rows (sequence/link mismatch: the seq is inside the hash) and a truncated tail (the head
   * row no longer matches the last entry).
   */
  async verifyAudit(): Promise<AuditVerifyResult> {
    // The head and every page of the log from one snapshot: read one after the other, a batch committed in between
    // would show a log longer than its head — a false "deleted from the end" while the CA is issuing.
    return this.db.snapshot((q) => this.verifyAuditIn(q));
  }

  private async verifyAuditIn(q: Queryable): Promise<AuditVerifyResult> {
    const head = (await q.query<{ seq: number | string; hash: string }>("SELECT seq, hash FROM audit_head WHERE id = 1"))[0];
    const headSeq = Number(head?.seq ?? -1);
    let prev = GENESIS_HASH;
    let expected = 1;
    let n = 0;
    const page = 5000;
    // Read in physical insertion order is not guaranteed by SQL; order by seq, and check each row's link.
    for (let after = 0; ; ) {
      const rows = await q.query("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", [after, page]);
      for (const r of rows) {
        const seq = Number(r.seq);
        if (seq !== expected) return { ok: false, entries: n, headSeq, problem: { seq: expected, reason: `entry ${expected} is missing (next stored entry is ${seq})` } };
        if (str(r.prev_hash) !== prev) return { ok: false, entries: n, headSeq, problem: { seq, reason: `entry ${seq} does not link to entry ${seq - 1} (prev_hash differs)` } };
        const h = auditHash(seq, str(r.at), str(r.actor), str(r.action), str(r.target), str(r.details), str(r.prev_hash));
        if (h !== str(r.hash)) return { ok: false, entries: n, headSeq, problem: { seq, reason: `entry ${seq} was modified (hash mismatch)` } };
        prev = h;
        expected = seq + 1;
        n++;
        after = seq;
      }
      if (rows.length < page) break;
    }
    if (!head) return { ok: false, entries: n, headSeq, problem: { seq: 0, reason: "chain head row is missing" } };
    if (headSeq !== n || head.hash !== prev) {
      return { ok: false, entries: n, headSeq, problem: { seq: n + 1, reason: `chain head says ${headSeq} entries ending in ${head.hash.slice(0, 12)}…, log has ${n} ending in ${prev.slice(0, 12)}… (entries deleted from the end?)` } };
    }
    return { ok: true, entries: n, headSeq };
  }

  // ---- CAs --------------------------------------------------------------------------------------------------

  async addCa(ca: Omit<CaRecord, "createdAt">, actor: string): Promise<CaRecord> {
    const createdAt = new Date().toISOString();
    await this.db.transaction(async (tx) => {
      await tx.run(
        "INSERT INTO cas (id, kind, name, parent_id, cert_pem, key_label, key_algorithm, not_before, not_after, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [ca.id, ca.kind, ca.name, ca.parentId, ca.certPem, ca.keyLabel, ca.keyAlgorithm, ca.notBefore, ca.notAfter, ca.status, createdAt],
      );
      await tx.run("INSERT INTO crls (issuer_id, crl_number) VALUES (?, 0)", [ca.id]);
      await this.appendAudit(tx, { actor, action: ca.kind === "root" ? "ca.root.create" : "ca.issuing.create", target: ca.id, details: { name: ca.name, keyLabel: ca.keyLabel, keyAlgorithm: ca.keyAlgorithm, notAfter: ca.notAfter, parentId: ca.parentId } });
    });
    return { ...ca, createdAt };
  }

  async listCas(kind?: CaRecord["kind"]): Promise<CaRecord[]> {
    const rows = kind
      ? await this.db.query("SELECT * FROM cas WHERE kind = ? ORDER BY created_at, id", [kind])
      : await this.db.query("SELECT * FROM cas ORDER BY created_at, id");
    return rows.map(toCa);
  }

  async getCa(id: string): Promise<CaRecord | undefined> {
    const r = (await this.db.query("SELECT * FROM cas WHERE id = ?", [id]))[0];
    return r ? toCa(r) : undefined;
  }

  async setCaStatus(id: string, status: CaRecord["status"], actor: string): Promise<void> {
    await this.db.transaction(async (tx) => {
      const n = await tx.run("UPDATE cas SET status = ? WHERE id = ?", [status, id]);
      if (n === 0) throw new EdgeTrustError("NOT_FOUND", `no CA ${id}`);
      await this.appendAudit(tx, { actor, action: "ca.status", target: id, details: { status } });
    });
  }

  // ---- certificates -----------------------------------------------------------------------------------------

  /**
   * Record an issued certificate with its audit entry. Concurrent calls are group-committed: several certificates
   * and their audit entries in one transaction; this resolves only after that transaction committed. A duplicate
   * serial (or fingerprint) fails with CONFLICT for that certificate alone (the caller re-issues).
   */
  async recordIssued(cert: NewCertificate, actor: string, action = "cert.issue"): Promise<CertificateRecord> {
    const createdAt = new Date().toISOString();
    await this.issuance.submit({ cert, actor, action, createdAt });
    return { ...cert, status: "good", revokedAt: null, revocationReason: null, createdAt };
  }

  /** One transaction: every certificate row, then their audit entries in the same order. */
  private async writeIssued(batch: IssuedWrite[]): Promise<void[]> {
    const certRows: Param[][] = batch.map(({ cert, createdAt }) => [
      cert.serial, cert.issuerId, cert.profile, cert.subject, JSON.stringify(cert.sans), cert.deviceId, cert.spkiSha256, cert.fingerprintSha256,
      cert.notBefore, cert.notAfter, cert.certPem, cert.replacesSerial, createdAt,
    ]);
    const audits: AuditInput[] = batch.map(({ cert, actor, action }) => ({
      actor, action, target: cert.serial,
      details: { issuer: cert.issuerId, profile: cert.profile, subject: cert.subject, sans: cert.sans, deviceId: cert.deviceId, notAfter: cert.notAfter, fingerprint: cert.fingerprintSha256, replaces: cert.replacesSerial },
    }));
    try {
      const onePg = this.db.dialect === "postgres" && batch.length <= PG_ROWS_PER_STATEMENT;
      if (onePg && (await this.writeIssuedOptimistic(certRows, audits))) return batch.map(() => undefined);
      await this.db.transaction(async (tx) => {
        if (onePg) {
          // Four round trips a batch (BEGIN, head lock, this, COMMIT): the certificates, their audit entries and the
          // new head in one statement; the head is locked first, as every audit append does.
          const chained = this.chain(await this.lockHead(tx), audits);
          await tx.run(
            `WITH c AS (INSERT INTO certificates (${CERT_COLUMNS}) VALUES ${certRows.map(() => CERT_ROW).join(", ")}),
             a AS (INSERT INTO audit_log (${AUDIT_COLUMNS}) VALUES ${chained.rows.map(() => AUDIT_ROW).join(", ")})
             UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1`,
            [...certRows.flat(), ...chained.rows.flat(), chained.seq, chained.hash],
          );
          this.knownHead = { seq: chained.seq, hash: chained.hash };
          return;
        }
        await this.insertRows(tx, "certificates", CERT_COLUMNS, CERT_ROW, certRows);
        await this.appendAuditMany(tx, audits);
      });
    } catch (e) {
      if (isUniqueViolation(e)) {
        const which = batch.length === 1 ? `certificate serial ${batch[0]?.cert.serial} already recorded` : `a certificate of this batch of ${batch.length} is already recorded`;
        throw new EdgeTrustError("CONFLICT", which, { cause: e });
      }
      throw e;
    }
    return batch.map(() => undefined);
  }

  /**
   * PostgreSQL, one round trip: the batch chained from the head this process last saw, written by ONE statement (its
   * own transaction) that moves the head only `WHERE seq = <expected> AND hash = <expected>` and inserts the rows only
   * if that update took the row. The update holds the head's row lock until the statement commits, exactly as the
   * locked path's `SELECT ... FOR UPDATE` does; if another writer moved the head first (another process, or an
   * audit entry of this one), the update matches nothing (READ COMMITTED re-checks the condition on the row the other
   * writer committed), nothing is written, and the head the statement saw is remembered for one more try. False:
   * not written — the caller takes the locked path. Any error (a duplicate serial) rolls the whole statement back.
   */
  private async writeIssuedOptimistic(certRows: Param[][], audits: AuditInput[]): Promise<boolean> {
    for (let attempt = 0; attempt < 2 && this.knownHead; attempt++) {
      const expected = this.knownHead;
      const chained = this.chain(expected, audits);
      // The first row's casts type the VALUES columns (seq is BIGINT, the rest TEXT).
      const auditRows = chained.rows.map((_, i) => (i === 0 ? "(?::bigint, ?::text, ?::text, ?::text, ?::text, ?::text, ?::text, ?::text)" : AUDIT_ROW));
      const [r] = await this.db.query<{ written: number | string; seq: number | string; hash: string }>(
        `WITH h AS (UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1 AND seq = ? AND hash = ? RETURNING seq),
         c AS (INSERT INTO certificates (${CERT_COLUMNS}) SELECT * FROM (VALUES ${certRows.map(() => CERT_ROW).join(", ")}) AS v WHERE EXISTS (SELECT 1 FROM h)),
         a AS (INSERT INTO audit_log (${AUDIT_COLUMNS}) SELECT * FROM (VALUES ${auditRows.join(", ")}) AS v WHERE EXISTS (SELECT 1 FROM h))
         SELECT (SELECT count(*) FROM h) AS written, seq, hash FROM audit_head WHERE id = 1`,
        [chained.seq, chained.hash, expected.seq, expected.hash, ...certRows.flat(), ...chained.rows.flat()],
      );
      if (r && Number(r.written) === 1) {
        this.knownHead = { seq: chained.seq, hash: chained.hash };
        return true;
      }
      this.optimisticMisses++;
      this.knownHead = r && (Number(r.seq) !== expected.seq || r.hash !== expected.hash) ? { seq: Number(r.seq), hash: r.hash } : undefined;
    }
    return false;
  }

  /** PostgreSQL batches whose one-statement write found the head moved (tests, metrics). */
  optimisticMisses = 0;

  async getCertificate(serial: string): Promise<CertificateRecord | undefined> {
    const r = (await this.db.query("SELECT * FROM certificates WHERE serial = ?", [normalizeSerial(serial)]))[0];
    return r ? toCert(r) : undefined;
  }

  async listCertificates(filter: { deviceId?: string; status?: "good" | "revoked"; issuerId?: string; limit?: number; afterSerial?: string } = {}): Promise<CertificateRecord[]> {
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (filter.deviceId) { where.push("device_id = ?"); params.push(filter.deviceId); }
    if (filter.status) { where.push("status = ?"); params.push(filter.status); }
    if (filter.issuerId) { where.push("issuer_id = ?"); params.push(filter.issuerId); }
    if (filter.afterSerial) { where.push("serial > ?"); params.push(filter.afterSerial); }
    params.push(filter.limit ?? 1000);
    const rows = await this.db.query(`SELECT * FROM certificates${where.length ? " WHERE " + where.join(" AND ") : ""} ORDER BY serial LIMIT ?`, params);
    return rows.map(toCert);
  }

  async countCertificates(): Promise<{ total: number; revoked: number }> {
    const r = (await this.db.query<{ total: number | string; revoked: number | string | null }>("SELECT COUNT(*) AS total, SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END) AS revoked FROM certificates"))[0];
    return { total: Number(r?.total ?? 0), revoked: Number(r?.revoked ?? 0) };
  }

  /**
   * Revoke by serial. Revoking an already revoked certificate with the reason it was revoked for is a repeat
   * (`repeated`, nothing written: the request that made it may have failed after its commit); with another reason it
   * is a CONFLICT (the first reason stands), except that `certificateHold` may be made permanent.
   */
  async revoke(serial: string, reason: RevocationReason, actor: string): Promise<{ record: CertificateRecord; repeated: boolean }> {
    const s = normalizeSerial(serial);
    const at = new Date().toISOString();
    const repeated = await this.db.transaction(async (tx) => {
      const cur = (await tx.query(`SELECT * FROM certificates WHERE serial = ?${this.db.forUpdate}`, [s]))[0];
      if (!cur) throw new EdgeTrustError("NOT_FOUND", `no certificate with serial ${s}`);
      const rec = toCert(cur);
      if (rec.status === "revoked" && rec.revocationReason === reason) return true;
      if (rec.status === "revoked" && !(rec.revocationReason === "certificateHold" && reason !== "certificateHold")) {
        throw new EdgeTrustError("CONFLICT", `certificate ${s} is already revoked (${rec.revocationReason ?? "unspecified"})`);
      }
      if (reason === "removeFromCRL") {
        if (rec.revocationReason !== "certificateHold") throw new EdgeTrustError("CONFLICT", `removeFromCRL only releases a certificateHold`);
        await tx.run("UPDATE certificates SET status = 'good', revoked_at = NULL, revocation_reason = NULL WHERE serial = ?", [s]);
      } else {
        await tx.run("UPDATE certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ? WHERE serial = ?", [at, reason, s]);
      }
      await this.appendAudit(tx, { actor, action: reason === "removeFromCRL" ? "cert.release" : "cert.revoke", target: s, details: { reason, issuer: rec.issuerId, deviceId: rec.deviceId } });
      return false;
    });
    const record = await this.getCertificate(s);
    if (!record) throw new EdgeTrustError("INTERNAL", `certificate ${s} vanished`);
    return { record, repeated };
  }

  async revokedBy(issuerId: string, q: Queryable = this.db): Promise<{ serial: string; revokedAt: string; reason: RevocationReason }[]> {
    const rows = await q.query("SELECT serial, revoked_at, revocation_reason FROM certificates WHERE issuer_id = ? AND status = 'revoked' ORDER BY serial", [issuerId]);
    return rows.map((r) => ({ serial: str(r.serial), revokedAt: str(r.revoked_at), reason: str(r.revocation_reason) as RevocationReason }));
  }

  // ---- CRLs -------------------------------------------------------------------------------------------------

  /**
   * Build and store the next CRL for an issuer under that issuer's row lock: the CRL number is strictly increasing
   * across every process, and the stored CRL is the one built with that number.
   */
  async nextCrl(issuerId: string, build: (crlNumber: number, tx: Queryable) => Promise<{ der: Uint8Array; thisUpdate: Date; nextUpdate: Date }>): Promise<{ crlNumber: number; der: Buffer }> {
    return this.db.exclusive(`crl:${issuerId}`, async (tx) => {
      const row = (await tx.query<{ crl_number: number | string }>(`SELECT crl_number FROM crls WHERE issuer_id = ?${this.db.forUpdate}`, [issuerId]))[0];
      if (!row) throw new EdgeTrustError("NOT_FOUND", `no CA ${issuerId}`);
      const n = Number(row.crl_number) + 1;
      // The builder reads through this transaction: a second pool connection here could deadlock under load.
      const crl = await build(n, tx);
      const der = Buffer.from(crl.der);
      await tx.run("UPDATE crls SET crl_number = ?, this_update = ?, next_update = ?, der_b64 = ? WHERE issuer_id = ?", [
        n, crl.thisUpdate.toISOString(), crl.nextUpdate.toISOString(), der.toString("base64"), issuerId,
      ]);
      return { crlNumber: n, der };
    });
  }

  async currentCrl(issuerId: string): Promise<{ crlNumber: number; der: Buffer; nextUpdate: Date } | undefined> {
    const r = (await this.db.query("SELECT crl_number, next_update, der_b64 FROM crls WHERE issuer_id = ?", [issuerId]))[0];
    if (!r || !r.der_b64) return undefined;
    return { crlNumber: Number(r.crl_number), der: Buffer.from(str(r.der_b64), "base64"), nextUpdate: new Date(str(r.next_update)) };
  }

  // ---- principals (admin tokens and admin certificates) ------------------------------------------------------

  /** Create an API token; only its sha256 is stored. The plaintext is returned once. */
  async createToken(name: string, role: Role, actor: string): Promise<{ id: string; token: string; role: Role }> {
    const id = randomUUID();
    const token = `et_${randomBytes(32).toString("base64url")}`;
    await this.db.transaction(async (tx) => {
      await tx.run("INSERT INTO principals (id, name, role, kind, credential_sha256, created_at) VALUES (?, ?, ?, 'token', ?, ?)", [id, name, role, sha256Hex(token), new Date().toISOString()]);
      await this.appendAudit(tx, { actor, action: "principal.token.create", target: id, details: { name, role } });
    });
    return { id, token, role };
  }

  /** Register an admin client certificate by its SHA-256 fingerprint. */
  async addAdminCertificate(name: string, role: Role, fingerprintSha256: string, actor: string): Promise<{ id: string }> {
    const id = randomUUID();
    await this.db.transaction(async (tx) => {
      await tx.run("INSERT INTO principals (id, name, role, kind, credential_sha256, created_at) VALUES (?, ?, ?, 'certificate', ?, ?)", [id, name, role, fingerprintSha256.toLowerCase(), new Date().toISOString()]);
      await this.appendAudit(tx, { actor, action: "principal.certificate.add", target: id, details: { name, role, fingerprint: fingerprintSha256 } });
    });
    return { id };
  }

  async revokePrincipal(id: string, actor: string): Promise<void> {
    await this.db.transaction(async (tx) => {
      const n = await tx.run("UPDATE principals SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [new Date().toISOString(), id]);
      if (n === 0) throw new EdgeTrustError("NOT_FOUND", `no active principal ${id}`);
      await this.appendAudit(tx, { actor, action: "principal.revoke", target: id });
    });
  }

  /**
   * Find the principal for a presented token. The lookup is by the token's sha256 (an index probe that reveals
   * nothing about the token), then the stored hash is compared in constant time.
   */
  async principalForToken(token: string): Promise<Principal | undefined> {
    return this.principalFor("token", sha256Hex(token));
  }

  async principalForCertificate(fingerprintSha256: string): Promise<Principal | undefined> {
    return this.principalFor("certificate", fingerprintSha256.toLowerCase());
  }

  private async principalFor(kind: "token" | "certificate", hash: string): Promise<Principal | undefined> {
    const r = (await this.db.query("SELECT id, name, role, kind, credential_sha256 FROM principals WHERE credential_sha256 = ? AND kind = ? AND revoked_at IS NULL", [hash, kind]))[0];
    if (!r) return undefined;
    const a = Buffer.from(str(r.credential_sha256), "hex");
    const b = Buffer.from(hash, "hex");
    if (a.length !== b.length || !timingSafeEqual(a, b)) return undefined;
    return { id: str(r.id), name: str(r.name), role: str(r.role) as Role, kind };
  }

  async listPrincipals(): Promise<(Principal & { createdAt: string; revokedAt: string | null })[]> {
    const rows = await this.db.query("SELECT id, name, role, kind, created_at, revoked_at FROM principals ORDER BY created_at");
    return rows.map((r) => ({ id: str(r.id), name: str(r.name), role: str(r.role) as Role, kind: str(r.kind) as Principal["kind"], createdAt: str(r.created_at), revokedAt: strOrNull(r.revoked_at) }));
  }

  // ---- enrollment records (the later enrollment API writes these; issuance reads subject and SANs here) ------

  async upsertEnrollment(e: EnrollmentWrite, actor: string): Promise<EnrollmentRecord> {
    await this.db.transaction(async (tx) => this.appendAuditMany(tx, await this.writeEnrollments(tx, [{ enrollment: e, actor }])));
    const out = await this.getEnrollment(e.deviceId);
    if (!out) throw new EdgeTrustError("INTERNAL", `enrollment ${e.deviceId} vanished`);
    return out;
  }

  /**
   * Enrollment rows of `upsertEnrollment` written inside the caller's transaction (on PostgreSQL several in one
   * statement; device ids must differ); returns their audit entries for the caller to append with others in one
   * chain-head update (device registration batches its claims this way).
   */
  async writeEnrollments(tx: Queryable, list: { enrollment: EnrollmentWrite; actor: string }[]): Promise<AuditInput[]> {
    const now = new Date().toISOString();
    const rows: Param[][] = list.map(({ enrollment: e }) => [e.deviceId, e.kind, e.commonName, JSON.stringify(e.dnsNames), e.status ?? "enabled", now, now]);
    const upsert = (n: number) => `INSERT INTO enrollments (device_id, kind, common_name, dns_names, status, created_at, updated_at) VALUES ${Array.from({ length: n }, () => "(?, ?, ?, ?, ?, ?, ?)").join(", ")}
       ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind, common_name = excluded.common_name, dns_names = excluded.dns_names, status = excluded.status, updated_at = excluded.updated_at`;
    if (this.db.dialect === "sqlite") {
      for (const r of rows) await tx.run(upsert(1), r);
    } else {
      for (let i = 0; i < rows.length; i += PG_ROWS_PER_INSERT) {
        const chunk = rows.slice(i, i + PG_ROWS_PER_INSERT);
        await tx.run(upsert(chunk.length), chunk.flat());
      }
    }
    return list.map(({ enrollment: e, actor }) => ({ actor, action: "enrollment.upsert", target: e.deviceId, details: { kind: e.kind, commonName: e.commonName, dnsNames: e.dnsNames, status: e.status ?? "enabled" } }));
  }

  /**
   * The enrollment record as stored now. On PostgreSQL the reads asked for in one turn of the event loop go out as one
   * query (`device_id IN (...)`) on the next: every read is still made after it was asked for, so an enrollment
   * disabled before an issuance began stops it exactly as before — a burst of issuances costs one round trip, not
   * one each.
   */
  async getEnrollment(deviceId: string): Promise<EnrollmentRecord | undefined> {
    if (this.db.dialect !== "postgres") {
      const r = (await this.db.query("SELECT * FROM enrollments WHERE device_id = ?", [deviceId]))[0];
      return r ? toEnrollment(r) : undefined;
    }
    return new Promise((resolve, reject) => {
      if (this.enrollmentReads.size === 0) setImmediate(() => void this.readEnrollments());
      const waiting = this.enrollmentReads.get(deviceId);
      if (waiting) waiting.push({ resolve, reject });
      else this.enrollmentReads.set(deviceId, [{ resolve, reject }]);
    });
  }

  private async readEnrollments(): Promise<void> {
    const reads = this.enrollmentReads;
    this.enrollmentReads = new Map();
    const ids = [...reads.keys()];
    for (let i = 0; i < ids.length; i += ENROLLMENT_READS_PER_QUERY) {
      const chunk = ids.slice(i, i + ENROLLMENT_READS_PER_QUERY);
      try {
        const rows = await this.db.query(`SELECT * FROM enrollments WHERE device_id IN (${chunk.map(() => "?").join(", ")})`, chunk);
        const byId = new Map(rows.map((r) => [str(r.device_id), r]));
        for (const id of chunk) {
          const r = byId.get(id);
          for (const w of reads.get(id) ?? []) w.resolve(r ? toEnrollment(r) : undefined);
        }
      } catch (e) {
        for (const id of chunk) for (const w of reads.get(id) ?? []) w.reject(e);
      }
    }
  }
}

/**
 * Serials are stored as lowercase hex with no leading zeros (the integer's value), so the DER form (which may carry a
 * 00 sign byte), openssl's colon form and OCSP's CertID all map to one key.
 */
export function normalizeSerial(serial: string): string {
  const s = serial.trim().toLowerCase().replace(/^0x/, "").replace(/:/g, "");
  if (!/^[0-9a-f]{1,80}$/.test(s)) throw new EdgeTrustError("INVALID_INPUT", `serial "${serial}" is not a hex integer`);
  return s.replace(/^0+/, "") || "0";
}

function isUniqueViolation(e: unknown): boolean {
  const err = e as { code?: string; message?: string };
  return err.code === "23505" || err.code === "SQLITE_CONSTRAINT_PRIMARYKEY" || err.code === "SQLITE_CONSTRAINT_UNIQUE";
}
