import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { EdgeTrustError } from "../common/index.js";
import { openDb, type Db, type OpenDbOptions, type Queryable, type Row } from "./db.js";
import { GENESIS_HASH, migrate } from "./migrations.js";

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

export interface EnrollmentRecord {
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

export interface AuditInput {
  actor: string;
  action: string;
  target: string;
  details?: Record<string, unknown>;
}

export interface AuditVerifyResult {
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

/**
 * The CA's durable state: CAs, every issued certificate, revocations, CRL numbers, admin principals, enrollment
 * records, and the append-only hash-chained audit log. Every state change and its audit entry commit together.
 */
export class CaStore {
  private constructor(readonly db: Db) {}

  static async open(opts: OpenDbOptions): Promise<CaStore> {
    const db = await openDb(opts);
    try {
      await migrate(db);
    } catch (e) {
      await db.close();
      throw e;
    }
    return new CaStore(db);
  }

  static async fromDb(db: Db): Promise<CaStore> {
    await migrate(db);
    return new CaStore(db);
  }

  get dialect(): Db["dialect"] {
    return this.db.dialect;
  }

  close(): Promise<void> {
    return this.db.close();
  }

  // ---- audit ------------------------------------------------------------------------------------------------

  /**
   * Append to the chain inside the caller's transaction. The chain head row is locked (PG: SELECT ... FOR UPDATE;
   * SQLite: the transaction holds the write lock), so concurrent appenders from any number of processes queue up and
   * every entry links to exactly one predecessor.
   */
  async appendAudit(tx: Queryable, input: AuditInput): Promise<AuditEntry> {
    const head = (await tx.query<{ seq: number | string; hash: string }>(`SELECT seq, hash FROM audit_head WHERE id = 1${this.db.forUpdate}`))[0];
    if (!head) throw new EdgeTrustError("INTERNAL", "audit chain head row is missing");
    const seq = Number(head.seq) + 1;
    const at = new Date().toISOString();
    const details = JSON.stringify(input.details ?? {});
    const hash = auditHash(seq, at, input.actor, input.action, input.target, details, head.hash);
    await tx.run("INSERT INTO audit_log (seq, at, actor, action, target, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
      seq, at, input.actor, input.action, input.target, details, head.hash, hash,
    ]);
    await tx.run("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", [seq, hash]);
    return { seq, at, actor: input.actor, action: input.action, target: input.target, details: input.details ?? {}, prevHash: head.hash, hash };
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
    const head = (await this.db.query<{ seq: number | string; hash: string }>("SELECT seq, hash FROM audit_head WHERE id = 1"))[0];
    const headSeq = Number(head?.seq ?? -1);
    let prev = GENESIS_HASH;
    let expected = 1;
    let n = 0;
    const page = 5000;
    // Read in physical insertion order is not guaranteed by SQL; order by seq, and check each row's link.
    for (let after = 0; ; ) {
      const rows = await this.db.query("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", [after, page]);
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

  /** Record an issued certificate with its audit entry. A duplicate serial fails with CONFLICT (the caller re-issues). */
  async recordIssued(cert: NewCertificate, actor: string, action = "cert.issue"): Promise<CertificateRecord> {
    const createdAt = new Date().toISOString();
    try {
      await this.db.transaction(async (tx) => {
        await tx.run(
          `INSERT INTO certificates (serial, issuer_id, profile, subject, sans, device_id, spki_sha256, fingerprint_sha256, not_before, not_after, cert_pem, status, replaces_serial, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'good', ?, ?)`,
          [cert.serial, cert.issuerId, cert.profile, cert.subject, JSON.stringify(cert.sans), cert.deviceId, cert.spkiSha256, cert.fingerprintSha256, cert.notBefore, cert.notAfter, cert.certPem, cert.replacesSerial, createdAt],
        );
        await this.appendAudit(tx, {
          actor, action, target: cert.serial,
          details: { issuer: cert.issuerId, profile: cert.profile, subject: cert.subject, sans: cert.sans, deviceId: cert.deviceId, notAfter: cert.notAfter, fingerprint: cert.fingerprintSha256, replaces: cert.replacesSerial },
        });
      });
    } catch (e) {
      if (isUniqueViolation(e)) throw new EdgeTrustError("CONFLICT", `certificate serial ${cert.serial} already recorded`, { cause: e });
      throw e;
    }
    return { ...cert, status: "good", revokedAt: null, revocationReason: null, createdAt };
  }

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
   * Revoke by serial. Revoking an already revoked certificate is a CONFLICT (the first reason stands), except that
   * `certificateHold` may be made permanent. `onRevoked` runs inside the same transaction (CRL regeneration).
   */
  async revoke(serial: string, reason: RevocationReason, actor: string): Promise<CertificateRecord> {
    const s = normalizeSerial(serial);
    const at = new Date().toISOString();
    await this.db.transaction(async (tx) => {
      const cur = (await tx.query(`SELECT * FROM certificates WHERE serial = ?${this.db.forUpdate}`, [s]))[0];
      if (!cur) throw new EdgeTrustError("NOT_FOUND", `no certificate with serial ${s}`);
      const rec = toCert(cur);
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
    });
    const out = await this.getCertificate(s);
    if (!out) throw new EdgeTrustError("INTERNAL", `certificate ${s} vanished`);
    return out;
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

  async upsertEnrollment(e: Pick<EnrollmentRecord, "deviceId" | "kind" | "commonName" | "dnsNames"> & { status?: EnrollmentRecord["status"] }, actor: string): Promise<EnrollmentRecord> {
    const now = new Date().toISOString();
    await this.db.transaction(async (tx) => {
      await tx.run(
        `INSERT INTO enrollments (device_id, kind, common_name, dns_names, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind, common_name = excluded.common_name, dns_names = excluded.dns_names, status = excluded.status, updated_at = excluded.updated_at`,
        [e.deviceId, e.kind, e.commonName, JSON.stringify(e.dnsNames), e.status ?? "enabled", now, now],
      );
      await this.appendAudit(tx, { actor, action: "enrollment.upsert", target: e.deviceId, details: { kind: e.kind, commonName: e.commonName, dnsNames: e.dnsNames, status: e.status ?? "enabled" } });
    });
    const out = await this.getEnrollment(e.deviceId);
    if (!out) throw new EdgeTrustError("INTERNAL", `enrollment ${e.deviceId} vanished`);
    return out;
  }

  async getEnrollment(deviceId: string): Promise<EnrollmentRecord | undefined> {
    const r = (await this.db.query("SELECT * FROM enrollments WHERE device_id = ?", [deviceId]))[0];
    return r ? toEnrollment(r) : undefined;
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
