import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKeyPairSync } from "node:crypto";
import { DATABASE_URL, PG_SKIP_REASON, pgStore, sqliteStore, type TestStore } from "../test-helpers.js";
import { parseImport, parseCsvRecords } from "./import.js";
import { EnrollmentStore } from "./store.js";

/** A pool of real P-256 SPKIs (base64 DER): rows reuse them, which the model allows (no uniqueness on keys). */
const KEYS = Array.from({ length: 64 }, () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" }).toString("base64"));

/** N CSV rows; `bad` maps a 0-based data index to a broken row. */
export function csvFile(n: number, bad: Record<number, string> = {}, prefix = "dev"): string {
  const out = ["registrationId,attestation,credential,profile,lifetimeDays,edgeCa,dnsNames,labels,status"];
  for (let i = 0; i < n; i++) {
    const id = `${prefix}-${String(i).padStart(6, "0")}`;
    out.push(bad[i] ?? `${id},publicKey,${KEYS[i % KEYS.length]},device-identity,,true,,site=plant-1;line=7,enabled`);
  }
  return out.join("\n") + "\n";
}

/** The import suite, run on SQLite always and on PostgreSQL when DATABASE_URL is set. */
/**
 * A liveness bound, not a timing assertion: 100,000 rows take ~20 s on a quiet 2-core machine and went past the default
 * 60 s at load 15–19 (a clean-clone run beside other work).
 */
const BIG_IMPORT_BOUND_MS = 300_000;

function importSuite(name: string, open: () => Promise<TestStore>, rows: number) {
  describe(`bulk import (${name}, ${rows.toLocaleString("en")} rows)`, () => {
    let ts: TestStore;
    let es: EnrollmentStore;
    beforeAll(async () => {
      ts = await open();
      es = new EnrollmentStore(ts.store);
    });
    afterAll(async () => {
      await ts?.cleanup();
    });

    // Bad rows in 3 different batches (row numbers are CSV line numbers: data index + 2).
    const bad: Record<number, string> = { 10: "dev-bad-1,publicKey,bm90IGEga2V5,device-identity,,true,,,enabled" };
    const half = Math.floor(rows / 2);
    bad[half] = `../../etc/passwd,publicKey,${KEYS[0]},device-identity,,true,,,enabled`;
    bad[rows - 1] = `dev-dup,publicKey,${KEYS[1]},device-identity,,true,,,enabled`;
    bad[rows - 2] = `dev-dup,publicKey,${KEYS[1]},device-identity,,true,,,enabled`;
    bad[rows - 3] = `dev-lt,publicKey,${KEYS[1]},device-identity,9999999,true,,,enabled`;

    it("some bad rows: the report lists each with its reason; their batches write nothing; the rest commits", async () => {
      const progress: number[] = [];
      const report = await es.importIndividuals(parseImport(csvFile(rows, bad), "csv"), { actor: "test", lineId: null }, { onProgress: (d) => progress.push(d) });
      expect(progress.at(-1)).toBe(rows);
      const reasons = Object.fromEntries(report.rejected.map((r) => [r.row, r.reason]));
      expect(reasons[12]).toMatch(/SubjectPublicKeyInfo/);
      expect(reasons[half + 2]).toMatch(/registration id/);
      expect(reasons[rows + 1]).toMatch(/duplicate registration id/);
      expect(reasons[rows - 1]).toMatch(/lifetimeDays/);
      expect(report.rejected).toHaveLength(4);
      const badBatches = new Set([Math.floor(10 / 1000), Math.floor(half / 1000), Math.floor((rows - 1) / 1000)]);
      expect(report.batches.rejected.map((b) => b.index).sort((a, b) => a - b)).toEqual([...badBatches].sort((a, b) => a - b));
      const written = rows - badBatches.size * 1000;
      expect(report).toMatchObject({ total: rows, inserted: written, updated: 0, unchanged: 0, notWritten: badBatches.size * 1000 });
      expect(await es.countIndividuals()).toBe(written);
      // A good row of a failing batch was not written (all-or-nothing per batch).
      expect(await es.getIndividual("dev-000011")).toBeUndefined();
      expect(await es.getIndividual("dev-001000")).toMatchObject({ registrationId: "dev-001000", labels: { site: "plant-1", line: "7" }, edgeCa: true });
    }, BIG_IMPORT_BOUND_MS);

    it("the same file twice changes nothing", async () => {
      const before = await ts.store.db.query("SELECT MAX(updated_at) AS u, COUNT(*) AS n FROM individual_enrollments");
      const report = await es.importIndividuals(parseImport(csvFile(rows, bad), "csv"), { actor: "test", lineId: null });
      expect(report.inserted).toBe(0);
      expect(report.updated).toBe(0);
      expect(report.unchanged).toBe(rows - report.batches.rejected.length * 1000);
      expect(await ts.store.db.query("SELECT MAX(updated_at) AS u, COUNT(*) AS n FROM individual_enrollments")).toEqual(before);
    }, BIG_IMPORT_BOUND_MS);

    it("the corrected rows fill the rejected batches; a changed row is an update", async () => {
      const full = csvFile(rows).split("\n");
      const header = full[0] ?? "";
      const rejectedBatches = [0, Math.floor(half / 1000), Math.floor((rows - 1) / 1000)];
      const fixedRows = rejectedBatches.flatMap((b) => full.slice(1 + b * 1000, 1 + (b + 1) * 1000));
      const changed = `dev-001100,publicKey,${KEYS[1100 % KEYS.length]},device-identity,,true,,site=plant-2,enabled`;
      const report = await es.importIndividuals(parseImport([header, ...fixedRows, changed].join("\n"), "csv"), { actor: "test", lineId: null });
      expect(report.rejected).toEqual([]);
      expect(report).toMatchObject({ inserted: 3000, updated: 1 });
      expect(await es.countIndividuals()).toBe(rows);
      expect((await es.getIndividual("dev-001100"))?.labels).toEqual({ site: "plant-2" });
      expect((await ts.store.verifyAudit()).ok).toBe(true);
    });

    it("a line's quota stops the batch that would exceed it, and nothing of that batch is written", async () => {
      const { line } = await es.createLine({ name: "quota line", maxEnrollments: 1500 }, "test");
      const report = await es.importIndividuals(parseImport(csvFile(2000, {}, "q"), "csv"), { actor: "line", lineId: line.id });
      expect(report.inserted).toBe(1000);
      expect(report.batches.rejected).toEqual([expect.objectContaining({ index: 1, reason: expect.stringMatching(/quota/) as unknown })]);
      expect(await es.getIndividual("q-001000")).toBeUndefined();
      expect((await es.getLine(line.id))?.enrollmentsCreated).toBe(1000);
    });
  });
}

importSuite("SQLite", sqliteStore, 100_000);
if (DATABASE_URL) importSuite("PostgreSQL", () => pgStore(), 100_000);
else describe.skip(`bulk import (PostgreSQL): ${PG_SKIP_REASON}`, () => { it("skipped", () => undefined); });

describe("import file parsing", () => {
  it("CSV: quoted fields with commas, quotes and newlines (PEM), CRLF, BOM; unknown columns refuse the file", () => {
    const recs = parseCsvRecords('\uFEFFa,b\r\n"x,1","say ""hi""\nthere"\r\n\r\nc,d\ne,f');
    expect(recs).toEqual([{ line: 1, fields: ["a", "b"] }, { line: 2, fields: ["x,1", 'say "hi"\nthere'] }, { line: 5, fields: ["c", "d"] }, { line: 6, fields: ["e", "f"] }]);
    expect(() => parseCsvRecords('a,b\n"open,c\n')).toThrow(/CSV: Quote Not Closed/);
    expect(() => parseImport("registrationId,attestation,credential,evil\n", "csv")).toThrow(/unknown column/);
    const rows = parseImport("registrationId,attestation,credential,edgeCa,labels\nd1,publicKey,AAAA,maybe,\nd2,publicKey,AAAA,true,novalue\n", "csv");
    expect(rows.map((r) => r.error)).toEqual(["edgeCa must be true or false", 'label "novalue" is not key=value']);
  });

  it("JSON: an array or {enrollments}; a non-object row or an unknown field is a bad row", () => {
    const rows = parseImport(JSON.stringify({ enrollments: [{ registrationId: "a", attestation: "publicKey", credential: KEYS[0] }, 7, { registrationId: "b", attestation: "publicKey", credential: KEYS[0], extra: 1 }] }), "json");
    expect(rows.map((r) => r.error)).toEqual([undefined, "row is not a JSON object", "unknown field(s): extra"]);
  });
});
