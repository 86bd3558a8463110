import { randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { EdgeTrustError } from "../../common/index.js";
import type { GroupKeyVault } from "./group-keys.js";
import type { Param, Queryable, Row } from "../db.js";
import { sha256Hex, type AuditInput, type CaStore, type EnrollmentWrite } from "../store.js";
import { GroupCommit } from "../group-commit.js";
import {
  normalizeGroup, normalizeIndividual, type EnrollmentGroup, type EnrollmentGroupInput, type EnrollmentStatus, type GroupAttestation,
  type IndividualEnrollment, type IndividualEnrollmentInput, type NormalizedIndividual,
} from "./model.js";

/** How long a registration may stay `assigning` before the same request may take it over (its process is gone). */
const ABANDONED_CLAIM_MS = 30_000;
/** Registration claims (or results) per PostgreSQL statement in a batch. */
const CLAIMS_PER_STATEMENT = 128;
/** Individual-enrollment reads gathered into one PostgreSQL query at most. */
const INDIVIDUAL_READS_PER_QUERY = 500;

export const LINE_SCOPES = ["enroll", "read"] as const;
export type LineScope = (typeof LINE_SCOPES)[number];

/** A factory provisioning line: an API principal with scoped credentials, a quota and a rate limit. */
export interface ProvisioningLine {
  id: string;
  name: string;
  kind: "token" | "certificate";
  scopes: LineScope[];
  /** How many enrollments the line may create in total. */
  maxEnrollments: number;
  /** Requests per minute per route. */
  ratePerMinute: number;
  enrollmentsCreated: number;
  createdAt: string;
  revokedAt: string | null;
}

interface LineInput {
  name: string;
  scopes?: LineScope[];
  maxEnrollments?: number;
  ratePerMinute?: number;
  /** Authenticate with this client certificate (SHA-256 fingerprint, hex) instead of a token. */
  certFingerprintSha256?: string;
}

/** Who is writing: an admin (no line) or a provisioning line. `actor` goes to the audit log. */
export interface Writer {
  actor: string;
  lineId: string | null;
}

export interface RegistrationRecord {
  registrationId: string;
  source: string;
  idempotencyKey: string;
  requestSha256: string;
  operationId: string;
  status: "assigning" | "assigned" | "failed";
  result: unknown;
  error: string | null;
  createdAt: string;
  updatedAt: string;
}

interface ImportRowError {
  /** 1-based row number in the file (CSV: the header is row 1... data rows start at 2; JSON: array index + 1). */
  row: number;
  registrationId?: string;
  reason: string;
}

interface ImportReport {
  total: number;
  inserted: number;
  updated: number;
  unchanged: number;
  /** Rows not written: bad rows, and every row of a batch that had a bad row (all-or-nothing per batch). */
  notWritten: number;
  rejected: ImportRowError[];
  batches: { total: number; committed: number; rejected: { index: number; firstRow: number; lastRow: number; reason: string }[] };
}

export interface ImportRow {
  row: number;
  input: IndividualEnrollmentInput;
  /** Set when the row could not even be parsed (bad CSV field, not an object): reported, never written. */
  error?: string;
}

const str = (v: unknown): string => (v === null || v === undefined ? "" : String(v));
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));
const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

function toLine(r: Row): ProvisioningLine {
  return {
    id: str(r.id), name: str(r.name), kind: r.token_sha256 ? "token" : "certificate", scopes: JSON.parse(str(r.scopes) || "[]") as LineScope[],
    maxEnrollments: Number(r.max_enrollments), ratePerMinute: Number(r.rate_per_minute), enrollmentsCreated: Number(r.enrollments_created),
    createdAt: str(r.created_at), revokedAt: strOrNull(r.revoked_at),
  };
}

function toIndividual(r: Row): IndividualEnrollment {
  return {
    registrationId: str(r.registration_id), attestation: str(r.attestation) as IndividualEnrollment["attestation"], credentialSha256: str(r.credential_sha256),
    credential: str(r.credential), profile: str(r.profile) as IndividualEnrollment["profile"], lifetimeDays: numOrNull(r.lifetime_days),
    edgeCa: Number(r.edge_ca) === 1, dnsNames: JSON.parse(str(r.dns_names) || "[]") as string[], labels: JSON.parse(str(r.labels) || "{}") as Record<string, string>,
    status: str(r.status) as EnrollmentStatus, lineId: strOrNull(r.line_id), rowHash: str(r.row_hash), createdAt: str(r.created_at), updatedAt: str(r.updated_at),
  };
}

function toGroup(r: Row): EnrollmentGroup {
  return {
    id: str(r.id), attestation: str(r.attestation) as GroupAttestation, caCertPem: strOrNull(r.ca_cert_pem), hasGroupKey: Boolean(r.group_key),
    profile: str(r.profile) as EnrollmentGroup["profile"], lifetimeDays: numOrNull(r.lifetime_days), edgeCa: Number(r.edge_ca) === 1,
    labels: JSON.parse(str(r.labels) || "{}") as Record<string, string>, status: str(r.status) as EnrollmentStatus, lineId: strOrNull(r.line_id),
    createdAt: str(r.created_at), updatedAt: str(r.updated_at),
  };
}

function toRegistration(r: Row): RegistrationRecord {
  return {
    registrationId: str(r.registration_id), source: str(r.source), idempotencyKey: str(r.idempotency_key), requestSha256: str(r.request_sha256),
    operationId: str(r.operation_id), status: str(r.status) as RegistrationRecord["status"], result: r.result ? (JSON.parse(str(r.result)) as unknown) : null,
    error: strOrNull(r.error), createdAt: str(r.created_at), updatedAt: str(r.updated_at),
  };
}

const INDIVIDUAL_COLS = "registration_id, attestation, credential_sha256, credential, profile, lifetime_days, edge_ca, dns_names, labels, status, line_id, row_hash, created_at, updated_at";
const INDIVIDUAL_PLACEHOLDERS = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

function individualParams(n: NormalizedIndividual, lineId: string | null, now: string): Param[] {
  return [n.registrationId, n.attestation, n.credentialSha256, n.credential, n.profile, n.lifetimeDays, n.edgeCa ? 1 : 0, JSON.stringify(n.dnsNames), JSON.stringify(n.labels), n.status, lineId, n.rowHash, now, now];
}

function chunks<T>(xs: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += n) out.push(xs.slice(i, i + n));
  return out;
}

/** A request to claim a registration id, and the device record to write when the claim is fresh. */
export interface RegistrationClaim {
  registrationId: string;
  source: string;
  idempotencyKey: string;
  requestSha256: string;
  actor: string;
  device: EnrollmentWrite;
}

interface RegistrationResultWrite { registrationId: string; result: string; audit: AuditInput }

/** One item of the registration group commit: a claim, or a registration's result. */
type RegistrationWrite = { claim: RegistrationClaim; result?: undefined } | { result: RegistrationResultWrite; claim?: undefined };

export type ClaimOutcome = { fresh: true; operationId: string } | { fresh: false; record: RegistrationRecord };

/** Thrown inside a batch transaction to roll it back with per-row reasons. */
class BatchRejected extends Error {
  constructor(readonly rows: ImportRowError[], readonly reason: string) {
    super(reason);
  }
}

/**
 * Durable state of the enrollment API, on the CA's database (same transactions, same hash-chained audit log).
 * Every change commits together with its audit entry.
 */
export class EnrollmentStore {
  /** `groupKeys`: the CA key store's vault; without it symmetric group keys can be neither set nor read. */
  constructor(readonly ca: CaStore, private readonly groupKeys?: GroupKeyVault) {}

  private vault(): GroupKeyVault {
    if (!this.groupKeys) throw new EdgeTrustError("UNAVAILABLE", "symmetric group keys are wrapped by the CA key store, which this process has not opened");
    return this.groupKeys;
  }

  private get db() {
    return this.ca.db;
  }

  // ---- provisioning lines -----------------------------------------------------------------------------------

  /** Create a line; a token is generated (returned once; only its sha256 is stored) unless a certificate is given. */
  async createLine(input: LineInput, actor: string): Promise<{ line: ProvisioningLine; token?: string }> {
    const id = randomUUID();
    const name = input.name.trim();
    if (!name || name.length > 100) throw new EdgeTrustError("INVALID_INPUT", "line name must be 1..100 characters");
    const scopes = [...new Set(input.scopes ?? ["enroll", "read"])].sort();
    for (const s of scopes) if (!(LINE_SCOPES as readonly string[]).includes(s)) throw new EdgeTrustError("INVALID_INPUT", `unknown scope ${s}`, { hint: LINE_SCOPES.join(", ") });
    const maxEnrollments = input.maxEnrollments ?? 1_000_000;
    const ratePerMinute = input.ratePerMinute ?? 600;
    if (!Number.isInteger(maxEnrollments) || maxEnrollments < 0) throw new EdgeTrustError("INVALID_INPUT", "maxEnrollments must be a non-negative integer");
    if (!Number.isInteger(ratePerMinute) || ratePerMinute < 1) throw new EdgeTrustError("INVALID_INPUT", "ratePerMinute must be a positive integer");
    let token: string | undefined;
    let certSha: string | null = null;
    if (input.certFingerprintSha256) {
      certSha = input.certFingerprintSha256.replace(/:/g, "").toLowerCase();
      if (!/^[0-9a-f]{64}$/.test(certSha)) throw new EdgeTrustError("INVALID_INPUT", "certificate fingerprint must be 64 hex digits (SHA-256)");
    } else {
      token = `etl_${randomBytes(32).toString("base64url")}`;
    }
    const now = new Date().toISOString();
    await this.db.transaction(async (tx) => {
      await tx.run("INSERT INTO provisioning_lines (id, name, token_sha256, cert_sha256, scopes, max_enrollments, rate_per_minute, enrollments_created, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)", [
        id, name, token ? sha256Hex(token) : null, certSha, JSON.stringify(scopes), maxEnrollments, ratePerMinute, now,
      ]);
      await this.ca.appendAudit(tx, { actor, action: "line.create", target: id, details: { name, kind: token ? "token" : "certificate", scopes, maxEnrollments, ratePerMinute, ...(certSha ? { fingerprint: certSha } : {}) } });
    });
    const line = await this.getLine(id);
    if (!line) throw new EdgeTrustError("INTERNAL", `line ${id} vanished`);
    return token ? { line, token } : { line };
  }

  async getLine(id: string): Promise<ProvisioningLine | undefined> {
    const r = (await this.db.query("SELECT * FROM provisioning_lines WHERE id = ?", [id]))[0];
    return r ? toLine(r) : undefined;
  }

  async listLines(): Promise<ProvisioningLine[]> {
    return (await this.db.query("SELECT * FROM provisioning_lines ORDER BY created_at, id")).map(toLine);
  }

  async revokeLine(id: string, actor: string): Promise<ProvisioningLine> {
    await this.db.transaction(async (tx) => {
      const n = await tx.run("UPDATE provisioning_lines SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [new Date().toISOString(), id]);
      if (n === 0) throw new EdgeTrustError("NOT_FOUND", `no active provisioning line ${id}`);
      await this.ca.appendAudit(tx, { actor, action: "line.revoke", target: id });
    });
    const line = await this.getLine(id);
    if (!line) throw new EdgeTrustError("INTERNAL", `line ${id} vanished`);
    return line;
  }

  /** The active line holding this token (looked up by sha256, compared in constant time); revoked lines never match. */
  async lineForToken(token: string): Promise<ProvisioningLine | undefined> {
    return this.lineBy("token_sha256", sha256Hex(token));
  }

  async lineForCertificate(fingerprintSha256: string): Promise<ProvisioningLine | undefined> {
    return this.lineBy("cert_sha256", fingerprintSha256.toLowerCase());
  }

  private async lineBy(col: "token_sha256" | "cert_sha256", hash: string): Promise<ProvisioningLine | undefined> {
    const r = (await this.db.query(`SELECT * FROM provisioning_lines WHERE ${col} = ? AND revoked_at IS NULL`, [hash]))[0];
    if (!r) return undefined;
    const a = Buffer.from(str(r[col]), "hex");
    const b = Buffer.from(hash, "hex");
    if (a.length !== b.length || !timingSafeEqual(a, b)) return undefined;
    return toLine(r);
  }

  // ---- individual enrollments -------------------------------------------------------------------------------

  /**
   * The individual enrollment as stored now. On PostgreSQL the reads asked for in one turn of the event loop go out as
   * one query (`registration_id IN (...)`) on the next, as `CaStore.getEnrollment` does: each is still made after it
   * was asked for (an enrollment disabled before a registration arrived refuses it as before), but a burst of
   * registrations costs one round trip instead of one each — a single-row query was ~290 µs of the worker's CPU in
   * node-postgres under load, as much as the registration's CSR check.
   */
  async getIndividual(registrationId: string): Promise<IndividualEnrollment | undefined> {
    if (this.db.dialect !== "postgres") {
      const r = (await this.db.query("SELECT * FROM individual_enrollments WHERE registration_id = ?", [registrationId]))[0];
      return r ? toIndividual(r) : undefined;
    }
    return new Promise((resolve, reject) => {
      if (this.individualReads.size === 0) setImmediate(() => void this.readIndividuals());
      const waiting = this.individualReads.get(registrationId);
      if (waiting) waiting.push({ resolve, reject });
      else this.individualReads.set(registrationId, [{ resolve, reject }]);
    });
  }

  private individualReads = new Map<string, { resolve: (e: IndividualEnrollment | undefined) => void; reject: (e: unknown) => void }[]>();

  private async readIndividuals(): Promise<void> {
    const reads = this.individualReads;
    this.individualReads = new Map();
    const ids = [...reads.keys()];
    for (let i = 0; i < ids.length; i += INDIVIDUAL_READS_PER_QUERY) {
      const chunk = ids.slice(i, i + INDIVIDUAL_READS_PER_QUERY);
      try {
        const rows = await this.db.query(`SELECT * FROM individual_enrollments WHERE registration_id IN (${chunk.map(() => "?").join(", ")})`, chunk);
        const byId = new Map(rows.map((r) => [String(r.registration_id), r]));
        for (const id of chunk) {
          const r = byId.get(id);
          for (const w of reads.get(id) ?? []) {
            try {
              w.resolve(r ? toIndividual(r) : undefined);
            } catch (e) {
              w.reject(e);
            }
          }
        }
      } catch (e) {
        for (const id of chunk) for (const w of reads.get(id) ?? []) w.reject(e);
      }
    }
  }

  async findIndividualByCredential(credentialSha256: string): Promise<IndividualEnrollment | undefined> {
    const r = (await this.db.query("SELECT * FROM individual_enrollments WHERE credential_sha256 = ? ORDER BY registration_id LIMIT 1", [credentialSha256]))[0];
    return r ? toIndividual(r) : undefined;
  }

  async listIndividuals(opts: { lineId?: string | null; after?: string; limit?: number } = {}): Promise<IndividualEnrollment[]> {
    const where: string[] = ["registration_id > ?"];
    const params: Param[] = [opts.after ?? ""];
    if (opts.lineId) { where.push("line_id = ?"); params.push(opts.lineId); }
    params.push(Math.min(opts.limit ?? 100, 1000));
    return (await this.db.query(`SELECT * FROM individual_enrollments WHERE ${where.join(" AND ")} ORDER BY registration_id LIMIT ?`, params)).map(toIndividual);
  }

  async countIndividuals(): Promise<number> {
    const r = (await this.db.query<{ n: number | string }>("SELECT COUNT(*) AS n FROM individual_enrollments"))[0];
    return Number(r?.n ?? 0);
  }

  /** Create or update one individual enrollment. Same content again: nothing changes (`outcome: "unchanged"`). */
  async putIndividual(input: IndividualEnrollmentInput, w: Writer): Promise<{ enrollment: IndividualEnrollment; outcome: "inserted" | "updated" | "unchanged" }> {
    const n = normalizeIndividual(input);
    let outcome: "inserted" | "updated" | "unchanged" = "unchanged";
    try {
      await this.db.transaction(async (tx) => {
        const r = await this.writeBatch(tx, [{ row: 1, n }], w, "enrollment.put");
        outcome = r.inserted ? "inserted" : r.updated ? "updated" : "unchanged";
      });
    } catch (e) {
      if (e instanceof BatchRejected) throw new EdgeTrustError(e.reason.startsWith("quota") ? "QUOTA_EXCEEDED" : "FORBIDDEN", e.rows[0]?.reason ?? e.reason);
      throw e;
    }
    const enrollment = await this.getIndividual(n.registrationId);
    if (!enrollment) throw new EdgeTrustError("INTERNAL", `enrollment ${n.registrationId} vanished`);
    return { enrollment, outcome };
  }

  async setIndividualStatus(registrationId: string, status: EnrollmentStatus, w: Writer): Promise<IndividualEnrollment> {
    const cur = await this.getIndividual(registrationId);
    if (!cur || (w.lineId && cur.lineId !== w.lineId)) throw new EdgeTrustError("NOT_FOUND", `no enrollment ${registrationId}`);
    const { lineId: _l, createdAt: _c, updatedAt: _u, rowHash: _h, ...rest } = cur;
    return (await this.putIndividual({ ...rest, credential: cur.credential, status }, { ...w, lineId: cur.lineId })).enrollment;
  }

  /**
   * Write one batch of normalised rows inside `tx`: new rows in multi-row INSERTs, changed rows UPDATEd, identical
   * rows left alone; rows owned by another line, or a quota overrun, throw BatchRejected (the caller rolls back).
   */
  private async writeBatch(tx: Queryable, rows: { row: number; n: NormalizedIndividual }[], w: Writer, action: string): Promise<{ inserted: number; updated: number; unchanged: number }> {
    const existing = new Map<string, { hash: string; lineId: string | null }>();
    for (const part of chunks(rows, 500)) {
      const found = await tx.query(`SELECT registration_id, row_hash, line_id FROM individual_enrollments WHERE registration_id IN (${part.map(() => "?").join(", ")})`, part.map((r) => r.n.registrationId));
      for (const f of found) existing.set(str(f.registration_id), { hash: str(f.row_hash), lineId: strOrNull(f.line_id) });
    }
    const foreign: ImportRowError[] = [];
    const fresh: { row: number; n: NormalizedIndividual }[] = [];
    const changed: { row: number; n: NormalizedIndividual }[] = [];
    for (const r of rows) {
      const e = existing.get(r.n.registrationId);
      if (!e) fresh.push(r);
      else if (w.lineId && e.lineId !== w.lineId) foreign.push({ row: r.row, registrationId: r.n.registrationId, reason: "the registration id belongs to another provisioning line" });
      else if (e.hash !== r.n.rowHash) changed.push(r);
    }
    if (foreign.length) throw new BatchRejected(foreign, "rows belong to another provisioning line");
    if (w.lineId && fresh.length) {
      const ok = await tx.run("UPDATE provisioning_lines SET enrollments_created = enrollments_created + ? WHERE id = ? AND revoked_at IS NULL AND enrollments_created + ? <= max_enrollments", [fresh.length, w.lineId, fresh.length]);
      if (ok === 0) throw new BatchRejected(fresh.slice(0, 1).map((r) => ({ row: r.row, registrationId: r.n.registrationId, reason: "quota exceeded: the line may not create more enrollments" })), "quota exceeded");
    }
    const now = new Date().toISOString();
    for (const part of chunks(fresh, 100)) {
      await tx.run(`INSERT INTO individual_enrollments (${INDIVIDUAL_COLS}) VALUES ${part.map(() => INDIVIDUAL_PLACEHOLDERS).join(", ")}`, part.flatMap((r) => individualParams(r.n, w.lineId, now)));
    }
    for (const { n } of changed) {
      await tx.run(
        "UPDATE individual_enrollments SET attestation = ?, credential_sha256 = ?, credential = ?, profile = ?, lifetime_days = ?, edge_ca = ?, dns_names = ?, labels = ?, status = ?, row_hash = ?, updated_at = ? WHERE registration_id = ?",
        [n.attestation, n.credentialSha256, n.credential, n.profile, n.lifetimeDays, n.edgeCa ? 1 : 0, JSON.stringify(n.dnsNames), JSON.stringify(n.labels), n.status, n.rowHash, now, n.registrationId],
      );
    }
    if (fresh.length + changed.length > 0) {
      if (rows.length === 1 && rows[0]) {
        const n = rows[0].n;
        await this.ca.appendAudit(tx, { actor: w.actor, action: fresh.length ? `${action}.create` : `${action}.update`, target: n.registrationId, details: { attestation: n.attestation, credentialSha256: n.credentialSha256, profile: n.profile, status: n.status, lifetimeDays: n.lifetimeDays, edgeCa: n.edgeCa, dnsNames: n.dnsNames, labels: n.labels, lineId: w.lineId } });
      } else {
        await this.ca.appendAudit(tx, {
          actor: w.actor, action, target: `rows:${rows[0]?.row ?? 0}-${rows[rows.length - 1]?.row ?? 0}`,
          details: { inserted: fresh.length, updated: changed.length, lineId: w.lineId, rowsSha256: sha256Hex(rows.map((r) => `${r.n.registrationId}:${r.n.rowHash}`).join("\n")) },
        });
      }
    }
    return { inserted: fresh.length, updated: changed.length, unchanged: rows.length - fresh.length - changed.length };
  }

  /**
   * Bulk import. Rows are validated, then written in batches of `batchSize`, each batch in one transaction: a batch
   * with any bad row (invalid, duplicate in the file, owned by another line, over quota) writes nothing and every
   * reason is reported. Importing the same file again changes nothing (rows are compared by content hash).
   */
  async importIndividuals(rows: ImportRow[], w: Writer, opts: { batchSize?: number; onProgress?: (done: number, total: number) => void } = {}): Promise<ImportReport> {
    const batchSize = Math.max(1, Math.min(opts.batchSize ?? 1000, 5000));
    const report: ImportReport = { total: rows.length, inserted: 0, updated: 0, unchanged: 0, notWritten: 0, rejected: [], batches: { total: Math.ceil(rows.length / batchSize), committed: 0, rejected: [] } };
    const seen = new Set<string>();
    let done = 0;
    for (let b = 0; b * batchSize < rows.length; b++) {
      const part = rows.slice(b * batchSize, (b + 1) * batchSize);
      const good: { row: number; n: NormalizedIndividual }[] = [];
      const bad: ImportRowError[] = [];
      for (const r of part) {
        const rid = typeof r.input.registrationId === "string" ? r.input.registrationId : undefined;
        try {
          if (r.error) throw new EdgeTrustError("INVALID_INPUT", r.error);
          const n = normalizeIndividual(r.input);
          if (seen.has(n.registrationId)) throw new EdgeTrustError("INVALID_INPUT", "duplicate registration id in this import");
          seen.add(n.registrationId);
          good.push({ row: r.row, n });
        } catch (e) {
          bad.push({ row: r.row, ...(rid !== undefined ? { registrationId: rid.slice(0, 140) } : {}), reason: e instanceof Error ? e.message : String(e) });
        }
      }
      const firstRow = part[0]?.row ?? 0;
      const lastRow = part[part.length - 1]?.row ?? 0;
      if (bad.length) {
        report.rejected.push(...bad);
        report.notWritten += part.length;
        report.batches.rejected.push({ index: b, firstRow, lastRow, reason: `${bad.length} bad row(s): the whole batch was not written` });
      } else {
        try {
          const r = await this.db.transaction((tx) => this.writeBatch(tx, good, w, "enrollment.import.batch"));
          report.inserted += r.inserted;
          report.updated += r.updated;
          report.unchanged += r.unchanged;
          report.batches.committed++;
        } catch (e) {
          if (!(e instanceof BatchRejected)) throw e;
          report.rejected.push(...e.rows);
          report.notWritten += part.length;
          report.batches.rejected.push({ index: b, firstRow, lastRow, reason: `${e.reason}: the whole batch was not written` });
        }
      }
      done += part.length;
      opts.onProgress?.(done, rows.length);
    }
    await this.ca.audit({ actor: w.actor, action: "enrollment.import", target: w.lineId ? `line:${w.lineId}` : "admin", details: { total: report.total, inserted: report.inserted, updated: report.updated, unchanged: report.unchanged, notWritten: report.notWritten, rejectedBatches: report.batches.rejected.length } });
    return report;
  }

  // ---- enrollment groups ------------------------------------------------------------------------------------

  async putGroup(input: EnrollmentGroupInput, w: Writer): Promise<EnrollmentGroup> {
    const g = normalizeGroup(input, () => randomBytes(32).toString("base64"));
    // Wrapped before the transaction: the key store is not held while the row is locked.
    const wrapped = g.attestation === "symmetricKey" && g.groupKey ? await this.vault().wrap(g.id, g.groupKey) : null;
    const now = new Date().toISOString();
    await this.db.transaction(async (tx) => {
      const cur = (await tx.query(`SELECT line_id, group_key, group_key_form FROM enrollment_groups WHERE id = ?${this.db.forUpdate}`, [g.id]))[0];
      if (cur && w.lineId && strOrNull(cur.line_id) !== w.lineId) throw new EdgeTrustError("FORBIDDEN", `group ${g.id} belongs to another provisioning line`);
      // An update without a new key keeps the existing one, in whatever form it is stored (devices hold keys derived from it).
      const keep = !input.groupKey && cur && strOrNull(cur.group_key) !== null;
      const key = g.attestation !== "symmetricKey" ? null : keep ? strOrNull(cur.group_key) : wrapped;
      const form = g.attestation !== "symmetricKey" ? "wrapped-v1" : keep ? str(cur.group_key_form) : "wrapped-v1";
      if (cur) {
        await tx.run("UPDATE enrollment_groups SET attestation = ?, ca_cert_pem = ?, group_key = ?, group_key_form = ?, profile = ?, lifetime_days = ?, edge_ca = ?, labels = ?, status = ?, updated_at = ? WHERE id = ?", [
          g.attestation, g.caCertPem, key, form, g.profile, g.lifetimeDays, g.edgeCa ? 1 : 0, JSON.stringify(g.labels), g.status, now, g.id,
        ]);
      } else {
        await tx.run("INSERT INTO enrollment_groups (id, attestation, ca_cert_pem, group_key, group_key_form, profile, lifetime_days, edge_ca, labels, status, line_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
          g.id, g.attestation, g.caCertPem, key, form, g.profile, g.lifetimeDays, g.edgeCa ? 1 : 0, JSON.stringify(g.labels), g.status, w.lineId, now, now,
        ]);
      }
      await this.ca.appendAudit(tx, { actor: w.actor, action: cur ? "enrollment.group.update" : "enrollment.group.create", target: g.id, details: { attestation: g.attestation, profile: g.profile, status: g.status, lifetimeDays: g.lifetimeDays, edgeCa: g.edgeCa, labels: g.labels, caCertSha256: g.caCertPem ? sha256Hex(g.caCertPem) : null, keyChanged: Boolean(input.groupKey) || !cur } });
    });
    const out = await this.getGroup(g.id);
    if (!out) throw new EdgeTrustError("INTERNAL", `group ${g.id} vanished`);
    return out;
  }

  async getGroup(id: string): Promise<EnrollmentGroup | undefined> {
    const r = (await this.db.query("SELECT * FROM enrollment_groups WHERE id = ?", [id]))[0];
    return r ? toGroup(r) : undefined;
  }

  /**
   * The group key (base64), unwrapped by the CA key store at each use (registration, or handing it to the line once
   * at creation); never cached. A row still in the plain form is wrapped in place on this read.
   */
  async groupKey(id: string): Promise<string | undefined> {
    const r = (await this.db.query("SELECT group_key, group_key_form FROM enrollment_groups WHERE id = ?", [id]))[0];
    const stored = r?.group_key ? str(r.group_key) : undefined;
    if (!stored) return undefined;
    if (str(r?.group_key_form) === "plain") {
      await this.wrapPlainGroupKey(id, stored);
      return stored;
    }
    return this.vault().unwrap(id, stored);
  }

  private async wrapPlainGroupKey(id: string, plain: string): Promise<boolean> {
    const wrapped = await this.vault().wrap(id, plain);
    // Conditional on the row being unchanged: a concurrent wrap or a new key wins, and this write is a no-op.
    const n = await this.db.run("UPDATE enrollment_groups SET group_key = ?, group_key_form = 'wrapped-v1' WHERE id = ? AND group_key_form = 'plain' AND group_key = ?", [wrapped, id, plain]);
    return n > 0;
  }

  /** Start-up migration: wrap every group key still stored plain (idempotent); returns how many were wrapped now. */
  async wrapPlainGroupKeys(actor = "ca-service"): Promise<number> {
    const rows = await this.db.query("SELECT id, group_key FROM enrollment_groups WHERE group_key IS NOT NULL AND group_key_form = 'plain' ORDER BY id");
    let n = 0;
    for (const r of rows) if (await this.wrapPlainGroupKey(str(r.id), str(r.group_key))) n++;
    if (n > 0) await this.ca.audit({ actor, action: "enrollment.group.keys-wrapped", target: "enrollment_groups", details: { wrapped: n, groups: rows.map((r) => str(r.id)) } });
    return n;
  }

  async listGroups(opts: { lineId?: string | null; attestation?: GroupAttestation } = {}): Promise<EnrollmentGroup[]> {
    const where: string[] = [];
    const params: Param[] = [];
    if (opts.lineId) { where.push("line_id = ?"); params.push(opts.lineId); }
    if (opts.attestation) { where.push("attestation = ?"); params.push(opts.attestation); }
    return (await this.db.query(`SELECT * FROM enrollment_groups${where.length ? " WHERE " + where.join(" AND ") : ""} ORDER BY id`, params)).map(toGroup);
  }

  async setGroupStatus(id: string, status: EnrollmentStatus, w: Writer): Promise<EnrollmentGroup> {
    await this.db.transaction(async (tx) => {
      const n = await tx.run(`UPDATE enrollment_groups SET status = ?, updated_at = ? WHERE id = ?${w.lineId ? " AND line_id = ?" : ""}`, [status, new Date().toISOString(), id, ...(w.lineId ? [w.lineId] : [])]);
      if (n === 0) throw new EdgeTrustError("NOT_FOUND", `no enrollment group ${id}`);
      await this.ca.appendAudit(tx, { actor: w.actor, action: "enrollment.group.status", target: id, details: { status } });
    });
    const g = await this.getGroup(id);
    if (!g) throw new EdgeTrustError("INTERNAL", `group ${id} vanished`);
    return g;
  }

  // ---- registrations ----------------------------------------------------------------------------------------

  async getRegistration(registrationId: string): Promise<RegistrationRecord | undefined> {
    const r = (await this.db.query("SELECT * FROM registrations WHERE registration_id = ?", [registrationId]))[0];
    return r ? toRegistration(r) : undefined;
  }

  /**
   * Claim a registration id for one request. Same idempotency key and same request: the stored registration is
   * returned (a replay, nothing new is issued). Same key, different request: IDEMPOTENCY_KEY_REUSED. A different key
   * for an id that is registered (or being registered): REGISTRATION_CONFLICT. A failed registration may be retried.
   */
  async beginRegistration(registrationId: string, source: string, idempotencyKey: string, requestSha256: string, _actor: string): Promise<ClaimOutcome> {
    return this.db.transaction((tx) => this.claimIn(tx, { registrationId, source, idempotencyKey, requestSha256 }));
  }

  /**
   * `beginRegistration` and, when the claim is fresh, the device's enrollment record (`CaStore.upsertEnrollment`) in
   * the same transaction — batched with the other registrations arriving within a few milliseconds (group commit:
   * one transaction and one audit chain-head update for the batch; the caller is answered only after it committed).
   * A refused claim (conflict, reused key) fails only its own caller.
   */
  async claimRegistration(claim: RegistrationClaim): Promise<ClaimOutcome> {
    const out = await this.registrationWrites.submit({ claim });
    if (!out || "refused" in out) throw out?.refused ?? new EdgeTrustError("INTERNAL", "a registration claim got no answer");
    return out;
  }

  /** The registration's result, stored with its `registration.assigned` audit entry (batched with claims). */
  async completeRegistration(registrationId: string, result: unknown, auditDetails: Record<string, unknown>, actor: string): Promise<void> {
    await this.registrationWrites.submit({ result: { registrationId, result: JSON.stringify(result), audit: { actor, action: "registration.assigned", target: registrationId, details: auditDetails } } });
  }

  /** Batches written by `claimRegistration` and `completeRegistration` — one group commit for both (metrics, tests). */
  get registrationBatches(): GroupCommit<unknown, unknown>["stats"] {
    return this.registrationWrites.stats;
  }

  /**
   * Claims and results of registrations share one group commit: under load both kinds are always pending (new devices
   * arriving, issued ones finishing), so each write transaction — on SQLite one write-gate grant, BEGIN IMMEDIATE and
   * COMMIT; on PostgreSQL its round trips and the audit chain-head update — carries both instead of one each. Results
   * are written first: a replayed claim in the same batch as its registration's result finds it assigned.
   */
  private readonly registrationWrites = new GroupCommit<RegistrationWrite, ClaimOutcome | { refused: EdgeTrustError } | undefined>((batch) => this.db.transaction(async (tx) => {
    const results = batch.flatMap((w) => (w.result ? [w.result] : []));
    if (results.length > 0) await this.writeResults(tx, results);
    const claims = batch.flatMap((w, i) => (w.claim ? [{ i, c: w.claim }] : []));
    const out: (ClaimOutcome | { refused: EdgeTrustError } | undefined)[] = batch.map(() => undefined);
    if (claims.length > 0) {
      const answers = await this.writeClaims(tx, claims.map((x) => x.c));
      claims.forEach((x, k) => { out[x.i] = answers[k]; });
    }
    return out;
  }));

  private async writeClaims(tx: Queryable, batch: RegistrationClaim[]): Promise<(ClaimOutcome | { refused: EdgeTrustError })[]> {
    const out: (ClaimOutcome | { refused: EdgeTrustError })[] = [];
    const devices: RegistrationClaim[] = [];
    const inserted = await this.insertClaims(tx, batch);
    for (const [i, c] of batch.entries()) {
      const operationId = inserted.get(i);
      if (operationId) {
        out.push({ fresh: true, operationId });
        devices.push(c);
        continue;
      }
      try {
        const r = await this.claimIn(tx, c);
        if (r.fresh) devices.push(c);
        out.push(r);
      } catch (e) {
        // The claim's own refusal is an answer, not a failure of the batch (nothing of it was written).
        if (e instanceof EdgeTrustError && (e.code === "REGISTRATION_CONFLICT" || e.code === "IDEMPOTENCY_KEY_REUSED")) out.push({ refused: e });
        else throw e;
      }
    }
    await this.ca.appendAuditMany(tx, await this.ca.writeEnrollments(tx, devices.map((c) => ({ enrollment: c.device, actor: c.actor }))));
    return out;
  }

  /**
   * The first claim of each id not seen before, inserted (PostgreSQL: in one statement); returns batch index →
   * operation id of those inserted. The others (an id seen before, a second claim of one id) take `claimIn`'s locked read.
   */
  private async insertClaims(tx: Queryable, batch: RegistrationClaim[]): Promise<Map<number, string>> {
    const now = new Date().toISOString();
    const first = new Map<string, number>();
    batch.forEach((c, i) => { if (!first.has(c.registrationId)) first.set(c.registrationId, i); });
    const rows = [...first.values()].map((i) => ({ i, operationId: randomUUID(), c: batch[i] as RegistrationClaim }));
    const params = (r: (typeof rows)[number]): Param[] => [r.c.registrationId, r.c.source, r.c.idempotencyKey, r.c.requestSha256, r.operationId, now, now];
    const sql = (n: number) => `INSERT INTO registrations (registration_id, source, idempotency_key, request_sha256, operation_id, status, created_at, updated_at) VALUES ${Array.from({ length: n }, () => "(?, ?, ?, ?, ?, 'assigning', ?, ?)").join(", ")} ON CONFLICT (registration_id) DO NOTHING`;
    const out = new Map<number, string>();
    if (this.db.dialect === "sqlite") {
      for (const r of rows) if ((await tx.run(sql(1), params(r))) === 1) out.set(r.i, r.operationId);
      return out;
    }
    for (let k = 0; k < rows.length; k += CLAIMS_PER_STATEMENT) {
      const chunk = rows.slice(k, k + CLAIMS_PER_STATEMENT);
      const got = await tx.query<{ registration_id: string }>(`${sql(chunk.length)} RETURNING registration_id`, chunk.flatMap(params));
      const ids = new Set(got.map((g) => g.registration_id));
      for (const r of chunk) if (ids.has(r.c.registrationId)) out.set(r.i, r.operationId);
    }
    return out;
  }

  private async writeResults(tx: Queryable, batch: RegistrationResultWrite[]): Promise<void> {
    const now = new Date().toISOString();
    if (this.db.dialect === "sqlite") {
      for (const c of batch) await tx.run("UPDATE registrations SET status = 'assigned', result = ?, updated_at = ? WHERE registration_id = ?", [c.result, now, c.registrationId]);
    } else {
      for (let k = 0; k < batch.length; k += CLAIMS_PER_STATEMENT) {
        const chunk = batch.slice(k, k + CLAIMS_PER_STATEMENT);
        await tx.run(
          `UPDATE registrations SET status = 'assigned', result = CASE registration_id ${chunk.map(() => "WHEN ? THEN ?").join(" ")} END, updated_at = ? WHERE registration_id IN (${chunk.map(() => "?").join(", ")})`,
          [...chunk.flatMap((c) => [c.registrationId, c.result]), now, ...chunk.map((c) => c.registrationId)],
        );
      }
    }
    await this.ca.appendAuditMany(tx, batch.map((c) => c.audit));
  }

  private async claimIn(tx: Queryable, c: Omit<RegistrationClaim, "actor" | "device">): Promise<ClaimOutcome> {
    const { registrationId, source, idempotencyKey, requestSha256 } = c;
    const now = new Date().toISOString();
    // A first registration (the common case) is one statement; an id seen before takes the locked read below.
    const operationId = randomUUID();
    const inserted = await tx.run("INSERT INTO registrations (registration_id, source, idempotency_key, request_sha256, operation_id, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'assigning', ?, ?) ON CONFLICT (registration_id) DO NOTHING", [registrationId, source, idempotencyKey, requestSha256, operationId, now, now]);
    if (inserted === 1) return { fresh: true, operationId };
    const cur = (await tx.query(`SELECT * FROM registrations WHERE registration_id = ?${this.db.forUpdate}`, [registrationId]))[0];
    if (!cur) throw new EdgeTrustError("INTERNAL", `registration ${registrationId} neither inserted nor found`);
    const rec = toRegistration(cur);
    // A claim still 'assigning' long after it was made belongs to a process that died mid-request (kill -9,
    // host loss): the same device may take it over, or it could never register again.
    const abandoned = rec.status === "assigning" && Date.now() - Date.parse(rec.updatedAt) > ABANDONED_CLAIM_MS;
    if (rec.status !== "failed" && !abandoned) {
      // Audited as registration.refused by the enrollment API's refusal hook (an entry here would roll back).
      if (rec.idempotencyKey !== idempotencyKey) {
        throw new EdgeTrustError("REGISTRATION_CONFLICT", `registration ${registrationId} was already made with a different idempotency key`, { hint: "a device registers once; renew with its certificate, or ask an admin to reset the registration" });
      }
      if (rec.requestSha256 !== requestSha256) throw new EdgeTrustError("IDEMPOTENCY_KEY_REUSED", "this idempotency key was used with a different request");
      return { fresh: false, record: rec };
    }
    if (abandoned && (rec.idempotencyKey !== idempotencyKey || rec.requestSha256 !== requestSha256)) {
      throw new EdgeTrustError("REGISTRATION_CONFLICT", `registration ${registrationId} was abandoned mid-request; only its own request (same idempotency key and CSRs) may resume it`);
    }
    await tx.run("UPDATE registrations SET source = ?, idempotency_key = ?, request_sha256 = ?, operation_id = ?, status = 'assigning', result = NULL, error = NULL, updated_at = ? WHERE registration_id = ?", [source, idempotencyKey, requestSha256, operationId, now, registrationId]);
    return { fresh: true, operationId };
  }

  async failRegistration(registrationId: string, error: string, actor: string): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.run("UPDATE registrations SET status = 'failed', error = ?, updated_at = ? WHERE registration_id = ?", [error.slice(0, 500), new Date().toISOString(), registrationId]);
      await this.ca.appendAudit(tx, { actor, action: "registration.failed", target: registrationId, details: { error: error.slice(0, 500) } });
    });
  }

  /** Admin: forget a registration so the device may register again (a wiped device). Its certificates stay valid. */
  async resetRegistration(registrationId: string, actor: string): Promise<void> {
    await this.db.transaction(async (tx) => {
      const n = await tx.run("UPDATE registrations SET status = 'failed', error = 'reset by admin', updated_at = ? WHERE registration_id = ?", [new Date().toISOString(), registrationId]);
      if (n === 0) throw new EdgeTrustError("NOT_FOUND", `no registration ${registrationId}`);
      await this.ca.appendAudit(tx, { actor, action: "registration.reset", target: registrationId });
    });
  }
}
